//! A GeneratedNode as both controllers cache it: its identity, spec and status, and of its
//! labels, annotations and owners only what a reconcile reads or compares.
//!
//! The GeneratedNode cache is the operator's largest (one entry per node of every generation).
//! A cached `GeneratedNode` keeps two B-tree maps (labels, annotations) of about 0.5 KB each
//! however few their entries, and its owner references in full; this entry keeps the owner, the
//! generation label (sharing the owner's name), the traceparent as bytes and two digests
//! instead, and its spec, status, uid and resourceVersion compactly. The GeneratedNode
//! controller runs on these entries directly (it is a `Resource` of the same kind), and
//! rebuilds the object its reconcile renders from with [`CachedNode::to_object`].

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::{Lookup, ObjectRef};

use super::cached_spec::CachedSpec;
use super::cached_status::CachedStatus;
use super::children::Controller;
use super::compact;
use super::node_generation::APPLIED_HASH_ANNOTATION;
use crate::api::{
    ANNOTATION_TRACEPARENT, GeneratedNode, GeneratedNodeSpec, LABEL_GENERATION, NodeGeneration,
};

/// A cached GeneratedNode.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedNode {
    /// Name, namespace, generation and deletion timestamp only.
    pub metadata: ObjectMeta,
    /// Its uid and resourceVersion.
    pub version: compact::Version,
    pub spec: CachedSpec,
    pub status: Option<CachedStatus>,
    /// The controlling NodeGeneration, if one controls it.
    pub owner: Option<Controller>,
    /// The generation label (which NodeGeneration run made it); its children carry it too.
    pub generation_label: Option<Arc<str>>,
    /// The trace of the generation that made it, which its Deployment passes on.
    traceparent: Option<Traceparent>,
    /// The [`digest`](super::children::digest) of the hash of the spec its NodeGeneration applied
    /// (`APPLIED_HASH_ANNOTATION`).
    pub applied_hash: Option<super::children::Digest>,
    /// Digest of its labels and owner references, compared with those of the desired object.
    pub shape: u64,
}

impl From<GeneratedNode> for CachedNode {
    fn from(gn: GeneratedNode) -> Self {
        let GeneratedNode {
            metadata,
            spec,
            status,
        } = gn;
        let owner = compact::controller_of(&metadata, &<NodeGeneration as Resource>::kind(&()));
        // The label names the generation, which is (almost always) the owner: one copy.
        let generation_label = metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_GENERATION))
            .map(|g| match &owner {
                Some(o) if *o.name == **g => o.name.clone(),
                _ => Arc::from(g.as_str()),
            });
        let traceparent =
            compact::annotation(&metadata, ANNOTATION_TRACEPARENT).map(Traceparent::new);
        let applied_hash = compact::annotation_digest(&metadata, APPLIED_HASH_ANNOTATION);
        let shape = compact::shape(metadata.labels.as_ref(), metadata.owner_references.as_ref());
        let spec = CachedSpec::new(spec, metadata.name.as_deref().unwrap_or_default());
        let (metadata, version) = compact::identity(metadata);
        CachedNode {
            owner,
            generation_label,
            traceparent,
            applied_hash,
            shape,
            metadata,
            version,
            spec,
            status: status.map(CachedStatus::from),
        }
    }
}

impl CachedNode {
    /// The GeneratedNode with what its own reconcile reads: the identity, spec and status, the
    /// generation label and the traceparent (its children's labels and environment). Other
    /// labels, annotations and the owner references are left out.
    pub fn to_object(&self) -> GeneratedNode {
        let mut metadata = self.metadata.clone();
        self.version.restore(&mut metadata);
        metadata.labels = self
            .generation_label
            .as_ref()
            .map(|g| BTreeMap::from([(LABEL_GENERATION.to_string(), g.to_string())]));
        metadata.annotations = self
            .traceparent
            .as_ref()
            .map(|t| BTreeMap::from([(ANNOTATION_TRACEPARENT.to_string(), t.text())]));
        GeneratedNode {
            metadata,
            spec: self.spec(),
            status: self.status.as_ref().map(CachedStatus::to_status),
        }
    }

    /// Its spec as the API has it.
    pub fn spec(&self) -> GeneratedNodeSpec {
        self.spec
            .to_spec(self.metadata.name.as_deref().unwrap_or_default())
    }

    /// Whether the NodeGeneration with this uid controls it.
    pub fn owned_by(&self, uid: Option<&str>) -> bool {
        Controller::is(self.owner.as_ref(), uid)
    }

    /// The NodeGeneration that controls it, if one does (as a reference to `O`, the type the
    /// NodeGeneration controller runs on).
    pub fn owner_ref<O: Lookup<DynamicType = ()>>(&self) -> Option<ObjectRef<O>> {
        let owner = self.owner.as_ref()?;
        Some(ObjectRef::new(&owner.name).within(self.metadata.namespace.as_deref()?))
    }
}

compact::entry_of_kind!(CachedNode, GeneratedNode);

/// A W3C traceparent (`00-<trace id>-<parent id>-<flags>`, 55 characters) as its 26 bytes,
/// inline; anything else as text.
#[derive(Clone, Debug, PartialEq)]
enum Traceparent {
    Bytes([u8; 26]),
    Text(Box<str>),
}

impl Traceparent {
    /// Where the dashes are, and the hex digits between them.
    const DASHES: [usize; 3] = [2, 35, 52];

    fn new(s: String) -> Self {
        let canonical = s.len() == 55
            && s.char_indices().all(|(i, c)| {
                if Self::DASHES.contains(&i) {
                    c == '-'
                } else {
                    matches!(c, '0'..='9' | 'a'..='f')
                }
            });
        let mut bytes = [0; 26];
        if canonical && hex::decode_to_slice(s.replace('-', ""), &mut bytes).is_ok() {
            Traceparent::Bytes(bytes)
        } else {
            Traceparent::Text(s.into_boxed_str())
        }
    }

    fn text(&self) -> String {
        match self {
            Traceparent::Bytes(bytes) => {
                let hex = hex::encode(bytes);
                format!(
                    "{}-{}-{}-{}",
                    &hex[..2],
                    &hex[2..34],
                    &hex[34..50],
                    &hex[50..]
                )
            }
            Traceparent::Text(t) => t.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigMapSource, GeneratedNodeDeploy, NodeSource, NodeType};
    use crate::deploy::{Code, DeployDefaults, child_labels, deployment};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn node() -> GeneratedNode {
        let spec = GeneratedNodeSpec {
            node_type: NodeType::Effect,
            domain: "data".into(),
            service_name: "order_writer".into(),
            version: "1.0.0".into(),
            source: NodeSource {
                config_map: Some(ConfigMapSource {
                    name: "orders-effect-code".into(),
                }),
                git: None,
            },
            content_hash: "abc123".into(),
            deploy: GeneratedNodeDeploy::default(),
            depends_on: vec!["orders-store".into()],
            runtime: None,
        };
        let mut gn = GeneratedNode::new("orders-effect", spec);
        gn.metadata.namespace = Some("shop".into());
        gn.metadata.uid = Some("gn-uid".into());
        gn.metadata.resource_version = Some("42".into());
        gn.metadata.labels = Some(BTreeMap::from([
            (LABEL_GENERATION.to_string(), "orders".to_string()),
            (
                "argocd.argoproj.io/instance".to_string(),
                "shop".to_string(),
            ),
        ]));
        gn.metadata.annotations = Some(BTreeMap::from([
            (
                ANNOTATION_TRACEPARENT.to_string(),
                "00-abc-def-01".to_string(),
            ),
            (APPLIED_HASH_ANNOTATION.to_string(), "h1".to_string()),
            ("note".to_string(), "kept by nobody".to_string()),
        ]));
        gn.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "codegen.omninode.ai/v1alpha1".into(),
            kind: "NodeGeneration".into(),
            name: "orders".into(),
            uid: "ng-uid".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        gn
    }

    #[test]
    fn an_entry_keeps_what_reconciles_read() {
        let gn = node();
        let entry = CachedNode::from(gn.clone());
        assert_eq!(
            entry.owner_ref::<NodeGeneration>(),
            Some(ObjectRef::new("orders").within("shop"))
        );
        assert!(entry.owned_by(Some("ng-uid")));
        assert!(!entry.owned_by(Some("other")));
        assert!(!entry.owned_by(None));
        assert_eq!(entry.generation_label.as_deref(), Some("orders"));
        assert_eq!(
            entry.applied_hash,
            Some(super::super::children::digest("h1"))
        );
        assert_eq!(
            entry.shape,
            compact::shape(
                gn.metadata.labels.as_ref(),
                gn.metadata.owner_references.as_ref()
            )
        );
        assert_eq!(entry.metadata.labels, None);
        assert_eq!(entry.metadata.annotations, None);
        assert_eq!(entry.metadata.owner_references, None);
        assert_eq!(
            ObjectRef::from_obj(&entry).erase(),
            ObjectRef::from_obj(&gn).erase()
        );
    }

    #[test]
    fn a_traceparent_comes_back_exactly() {
        for t in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-abc-def-01",
            "",
        ] {
            assert_eq!(Traceparent::new(t.to_string()).text(), t);
        }
        assert!(matches!(
            Traceparent::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            Traceparent::Bytes(_)
        ));
    }

    #[test]
    fn the_rebuilt_object_renders_the_same_children() {
        let gn = node();
        let rebuilt = CachedNode::from(gn.clone()).to_object();
        assert_eq!(rebuilt.spec, gn.spec);
        assert_eq!(child_labels(&rebuilt), child_labels(&gn));
        let code = || Code::ConfigMap {
            name: "orders-effect-code".into(),
        };
        let defaults = DeployDefaults {
            image: "runtime:1".into(),
            image_runtime_version: "0.1.0".into(),
            kafka_bootstrap_servers: Some("kafka:9092".into()),
            git_image: "git:1".into(),
        };
        let labels = child_labels(&gn);
        let from_cache = deployment(&rebuilt, code(), labels.clone(), &defaults);
        assert_eq!(from_cache, deployment(&gn, code(), labels, &defaults));
        let env = format!("{:?}", from_cache.spec);
        assert!(
            env.contains("00-abc-def-01"),
            "the traceparent is passed on"
        );
    }
}
