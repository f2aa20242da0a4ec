//! A NodeGeneration as its controller caches it: identity, spec without the PRD's text, the
//! status trimmed to what a settled generation's refresh compares (`trim_cached`), and the
//! inline PRD's digest.
//!
//! Its labels and annotations (Argo CD's tracking ones, the user's own) are never read by a
//! reconcile; as maps they cost about 0.5 KB each however few their entries. The controller runs
//! on these entries (a `Resource` of the same kind) and rebuilds the object its reconcile reads
//! with [`CachedGeneration::to_object`]; a generation that must run reads the whole object from
//! the API server first.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::cached_status::CachedCondition;
use super::compact::{self, HexDigest, shared_value};
use super::node_generation::{CACHED_PRD_DIGEST, trim_cached};
use crate::api::{
    DeploySpec, HandlersSource, IntelligenceSpec, NodeGeneration, NodeGenerationSpec,
    NodeGenerationStatus, NodeStatus, NodeType, OutputSpec, OutputStatus, Phase, PrdSource,
    QualitySpec, SystemNodeStatus, SystemStatus, WorkflowSpec,
};

/// A cached NodeGeneration.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedGeneration {
    /// Name, namespace, generation and deletion timestamp only.
    pub metadata: ObjectMeta,
    /// Its uid and resourceVersion.
    pub version: compact::Version,
    /// The spec, without an inline PRD's text.
    pub spec: CachedGenerationSpec,
    /// The status without its conditions, which are kept as `conditions`.
    pub status: Option<CachedGenerationStatus>,
    pub conditions: Box<[CachedCondition]>,
    /// The SHA-256 of the inline PRD, if the spec had one.
    prd_digest: Option<HexDigest>,
}

impl From<NodeGeneration> for CachedGeneration {
    fn from(mut ng: NodeGeneration) -> Self {
        trim_cached(&mut ng);
        let NodeGeneration {
            metadata,
            spec,
            mut status,
        } = ng;
        let conditions = status
            .as_mut()
            .map(|s| std::mem::take(&mut s.conditions))
            .unwrap_or_default()
            .into_iter()
            .map(Into::into)
            .collect();
        let prd_digest = metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CACHED_PRD_DIGEST).cloned())
            .map(HexDigest::new);
        let (metadata, version) = compact::identity(metadata);
        CachedGeneration {
            metadata,
            version,
            spec: CachedGenerationSpec::new(spec),
            status: status.map(CachedGenerationStatus::from),
            conditions,
            prd_digest,
        }
    }
}

impl CachedGeneration {
    /// The NodeGeneration as the reconcile reads a cached one: the identity, the spec with the
    /// PRD's digest standing for its text, and the trimmed status.
    pub fn to_object(&self) -> NodeGeneration {
        let mut metadata = self.metadata.clone();
        self.version.restore(&mut metadata);
        metadata.annotations = self
            .prd_digest
            .as_ref()
            .map(|d| BTreeMap::from([(CACHED_PRD_DIGEST.to_string(), d.text())]));
        let mut status = self.status.as_ref().map(CachedGenerationStatus::to_status);
        if let Some(status) = status.as_mut() {
            status.conditions = self
                .conditions
                .iter()
                .map(CachedCondition::to_condition)
                .collect();
        }
        NodeGeneration {
            metadata,
            spec: self.spec.to_spec(),
            status,
        }
    }
}

compact::entry_of_kind!(CachedGeneration, NodeGeneration);

/// A [`NodeGenerationSpec`] without its PRD's text (`trim_cached` made that a digest): the
/// rarely set parts boxed, the domain shared; 128 bytes instead of 264.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedGenerationSpec {
    pub prd_from: Option<Box<PrdSource>>,
    node_types: Option<Box<[NodeType]>>,
    domain: Option<Arc<str>>,
    service_name: Option<Box<str>>,
    intelligence: IntelligenceSpec,
    quality: QualitySpec,
    output: OutputSpec,
    /// `None` for the defaults.
    deploy: Option<Box<DeploySpec>>,
    pub handlers: Option<Box<HandlersSource>>,
    workflow: Option<Box<WorkflowSpec>>,
    suspend: bool,
}

impl CachedGenerationSpec {
    /// Of a trimmed spec: an inline PRD's text is not kept.
    fn new(spec: NodeGenerationSpec) -> Self {
        CachedGenerationSpec {
            prd_from: spec.prd_from,
            node_types: spec.node_types.map(Vec::into_boxed_slice),
            domain: spec.domain.as_deref().map(shared_value),
            service_name: spec.service_name.map(String::into_boxed_str),
            intelligence: spec.intelligence,
            quality: spec.quality,
            output: spec.output,
            deploy: (spec.deploy != DeploySpec::default()).then(|| Box::new(spec.deploy)),
            handlers: spec.handlers.map(Box::new),
            workflow: spec.workflow.map(Box::new),
            suspend: spec.suspend,
        }
    }

    /// The spec as the API has it.
    pub fn to_spec(&self) -> NodeGenerationSpec {
        NodeGenerationSpec {
            prd: None,
            prd_from: self.prd_from.clone(),
            node_types: self.node_types.as_deref().map(<[NodeType]>::to_vec),
            domain: self.domain.as_deref().map(str::to_string),
            service_name: self.service_name.as_deref().map(str::to_string),
            intelligence: self.intelligence.clone(),
            quality: self.quality.clone(),
            output: self.output.clone(),
            deploy: self.deploy.as_deref().cloned().unwrap_or_default(),
            handlers: self.handlers.as_deref().cloned(),
            workflow: self.workflow.as_deref().cloned(),
            suspend: self.suspend,
        }
    }
}

/// A trimmed [`NodeGenerationStatus`] without its conditions: the rarely set parts boxed, the
/// hashes as bytes (112 bytes and a node list, against 320 bytes and five more allocations).
#[derive(Clone, Debug, PartialEq)]
pub struct CachedGenerationStatus {
    pub observed_generation: Option<i64>,
    pub phase: Option<Phase>,
    node_count: Option<i32>,
    quality: Option<f64>,
    nodes: Box<[CachedNodeStatus]>,
    output: CachedOutput,
    system: Option<Box<CachedSystem>>,
    input_hash: Option<HexDigest>,
}

/// The output status: once trimmed, empty (its ConfigMaps are not kept) unless it names a Git
/// commit, so an empty one takes no allocation.
#[derive(Clone, Debug, PartialEq)]
enum CachedOutput {
    None,
    Empty,
    Other(Box<OutputStatus>),
}

impl CachedOutput {
    fn new(output: Option<OutputStatus>) -> Self {
        match output {
            None => CachedOutput::None,
            Some(o) if o == OutputStatus::default() => CachedOutput::Empty,
            Some(o) => CachedOutput::Other(Box::new(o)),
        }
    }

    fn to_output(&self) -> Option<OutputStatus> {
        match self {
            CachedOutput::None => None,
            CachedOutput::Empty => Some(OutputStatus::default()),
            CachedOutput::Other(o) => Some((**o).clone()),
        }
    }
}

/// A [`SystemStatus`]: its count and the nodes' states are shared values (`2/2`, `Ready`,
/// `RollingOut`); a trimmed node is its name and state only.
#[derive(Clone, Debug, PartialEq)]
struct CachedSystem {
    ready: Arc<str>,
    nodes: Box<[CachedSystemNode]>,
}

#[derive(Clone, Debug, PartialEq)]
enum CachedSystemNode {
    /// Without title and edges, as `trim_cached` leaves it.
    Trimmed {
        name: Box<str>,
        state: Arc<str>,
    },
    Full(Box<SystemNodeStatus>),
}

impl CachedSystem {
    fn new(system: SystemStatus) -> Self {
        let nodes = system
            .nodes
            .into_iter()
            .map(|n| {
                if n.title.is_empty() && n.uses.is_empty() && n.guessed.is_empty() {
                    CachedSystemNode::Trimmed {
                        name: n.name.into_boxed_str(),
                        state: shared_value(&n.state),
                    }
                } else {
                    CachedSystemNode::Full(Box::new(n))
                }
            })
            .collect();
        CachedSystem {
            ready: shared_value(&system.ready),
            nodes,
        }
    }

    fn to_system(&self) -> SystemStatus {
        SystemStatus {
            ready: self.ready.to_string(),
            nodes: self
                .nodes
                .iter()
                .map(|n| match n {
                    CachedSystemNode::Trimmed { name, state } => SystemNodeStatus {
                        name: name.to_string(),
                        state: state.to_string(),
                        ..Default::default()
                    },
                    CachedSystemNode::Full(n) => (**n).clone(),
                })
                .collect(),
        }
    }
}

/// A [`NodeStatus`] with its content hash as bytes.
#[derive(Clone, Debug, PartialEq)]
struct CachedNodeStatus {
    name: Box<str>,
    content_hash: HexDigest,
    quality: f64,
    onex_score: f64,
    service_quality: Option<f64>,
    files: i32,
    node_type: NodeType,
    passed: bool,
}

impl From<NodeGenerationStatus> for CachedGenerationStatus {
    /// Of a status whose conditions, analysis and trace id were taken out (`trim_cached`).
    fn from(status: NodeGenerationStatus) -> Self {
        CachedGenerationStatus {
            observed_generation: status.observed_generation,
            phase: status.phase,
            node_count: status.node_count,
            quality: status.quality,
            nodes: status
                .nodes
                .into_iter()
                .map(|n| CachedNodeStatus {
                    name: n.name.into_boxed_str(),
                    content_hash: HexDigest::new(n.content_hash),
                    quality: n.quality,
                    onex_score: n.onex_score,
                    service_quality: n.service_quality,
                    files: n.files,
                    node_type: n.node_type,
                    passed: n.passed,
                })
                .collect(),
            output: CachedOutput::new(status.output),
            system: status.system.map(|s| Box::new(CachedSystem::new(s))),
            input_hash: status.input_hash.map(HexDigest::new),
        }
    }
}

impl CachedGenerationStatus {
    /// The status as the API has it, without conditions.
    fn to_status(&self) -> NodeGenerationStatus {
        NodeGenerationStatus {
            observed_generation: self.observed_generation,
            conditions: Vec::new(),
            phase: self.phase,
            node_count: self.node_count,
            quality: self.quality,
            analysis: None,
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeStatus {
                    name: n.name.to_string(),
                    node_type: n.node_type,
                    quality: n.quality,
                    onex_score: n.onex_score,
                    passed: n.passed,
                    files: n.files,
                    content_hash: n.content_hash.text(),
                    service_quality: n.service_quality,
                })
                .collect(),
            output: self.output.to_output(),
            system: self.system.as_deref().map(CachedSystem::to_system),
            input_hash: self.input_hash.as_ref().map(HexDigest::text),
            trace_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::ObjectRef;

    #[test]
    fn an_entry_keeps_the_prd_as_its_digest_and_no_labels_or_annotations() {
        let mut ng = NodeGeneration::new(
            "orders",
            NodeGenerationSpec {
                prd: Some("# Orders\n".into()),
                ..Default::default()
            },
        );
        ng.metadata.namespace = Some("shop".into());
        ng.metadata.uid = Some("ng-uid".into());
        ng.metadata.generation = Some(3);
        ng.metadata.labels = Some(BTreeMap::from([("team".into(), "orders".into())]));
        // Set by a user, this annotation would stand for a PRD that is not there.
        ng.metadata.annotations = Some(BTreeMap::from([
            (CACHED_PRD_DIGEST.to_string(), "forged".to_string()),
            (
                "argocd.argoproj.io/tracking-id".to_string(),
                "x".to_string(),
            ),
        ]));
        let entry = CachedGeneration::from(ng.clone());
        assert_eq!(entry.spec.to_spec().prd, None);
        assert_eq!(std::mem::size_of::<CachedGenerationSpec>(), 128);
        let digest = entry.prd_digest.as_ref().map(HexDigest::text).unwrap();
        assert_eq!(
            digest,
            "00d427d86cda4ae7d0683fa95fd7ed3da046d200fe513c6bc1d074850328232d"
        );
        assert_eq!(entry.metadata.labels, None);
        assert_eq!(entry.metadata.annotations, None);
        assert_eq!(entry.metadata.generation, Some(3));
        assert_eq!(
            ObjectRef::from_obj(&entry).erase(),
            ObjectRef::from_obj(&ng).erase()
        );

        let rebuilt = entry.to_object();
        assert_eq!(
            rebuilt.metadata.annotations,
            Some(BTreeMap::from([(CACHED_PRD_DIGEST.to_string(), digest)]))
        );
        assert_eq!(rebuilt.spec.prd, None);
    }

    #[test]
    fn a_spec_comes_back_as_it_went_in_but_for_the_prd() {
        let spec: NodeGenerationSpec = serde_json::from_value(serde_json::json!({
            "prdFrom": {"configMapKeyRef": {"name": "prds", "key": "orders.md"}},
            "nodeTypes": ["Effect", "Reducer"], "domain": "shop", "serviceName": "orders",
            "quality": {"threshold": 0.8},
            "deploy": {"replicas": 2},
            "handlers": {"configMap": {"name": "orders-handlers"}},
            "suspend": true
        }))
        .unwrap();
        assert_eq!(CachedGenerationSpec::new(spec.clone()).to_spec(), spec);
        let defaults = NodeGenerationSpec::default();
        let cached = CachedGenerationSpec::new(defaults.clone());
        assert_eq!(
            (cached.deploy.is_none(), cached.to_spec()),
            (true, defaults)
        );
    }

    #[test]
    fn a_trimmed_status_comes_back_as_it_went_in() {
        use crate::api::{Condition, ConditionStatus, SystemNodeStatus};
        let mut ng = NodeGeneration::new("orders", NodeGenerationSpec::default());
        ng.metadata.namespace = Some("shop".into());
        ng.status = Some(NodeGenerationStatus {
            observed_generation: Some(2),
            conditions: vec![Condition::new(
                "Ready",
                ConditionStatus::True,
                "GenerationSucceeded",
                "done",
            )],
            phase: Some(Phase::Completed),
            node_count: Some(1),
            quality: Some(0.9),
            nodes: vec![NodeStatus {
                name: "orders-effect".into(),
                node_type: NodeType::Effect,
                quality: 0.9,
                onex_score: 1.0,
                passed: true,
                files: 20,
                content_hash: "1d18c161cc6eab1bdffda900cda2a8ba6fca470ff3e358ad981dc532a95e3a49"
                    .into(),
                service_quality: Some(0.8),
            }],
            output: Some(OutputStatus::default()),
            system: Some(SystemStatus {
                ready: "0/1".into(),
                nodes: vec![SystemNodeStatus {
                    name: "orders-effect".into(),
                    state: "Pending".into(),
                    ..Default::default()
                }],
            }),
            input_hash: Some("ab".repeat(32)),
            ..Default::default()
        });
        let mut trimmed = ng.clone();
        trim_cached(&mut trimmed);
        let rebuilt = CachedGeneration::from(ng.clone()).to_object();
        assert_eq!(rebuilt.status, trimmed.status);
        // Untrimmed parts come back as they went in too.
        let mut status = ng.status.unwrap();
        status.conditions = Vec::new();
        status.output = Some(OutputStatus {
            config_maps: vec!["orders-effect-code".into()],
            git: None,
        });
        status.system.as_mut().unwrap().nodes[0].uses = vec!["orders-store".into()];
        let cached = CachedGenerationStatus::from(status.clone());
        assert_eq!(cached.to_status(), status);
        status.output = None;
        let cached = CachedGenerationStatus::from(status.clone());
        assert_eq!(cached.to_status(), status);
    }
}
