//! PRD requirements (+ optional intelligence hints) → a [`Plan`] of nodes to build.
//!
//! Pure: no I/O. The intelligence service, when it answers, contributes [`IntelligenceHints`];
//! otherwise the built-in pattern library alone decides, with its lower confidence.

mod classify;
mod entities;
mod library;
mod system;
mod workflow;

use std::collections::BTreeSet;

pub use classify::{
    Classification, Model, ModelData, embedded_model_data, explicit_type, features, model,
    model_json, train,
};
pub use entities::{DataModelError, Entity, Field};
pub use library::{Library, Performance, library};
pub use system::{SystemError, SystemGraph};
pub use workflow::{PlannedStep, STEP_RETRIES, STEP_TIMEOUT_MS};

use crate::api::{IntelligenceSource, NodeType, WorkflowSpec};
use crate::naming::{self, identifier_from, is_identifier};
use crate::prd::{Component, Prd};

/// Most operations a node gets; more requirements than that are folded into the description.
pub const MAX_OPERATIONS: usize = 12;
/// Most nodes one PRD may plan.
pub const MAX_NODES: usize = 8;
/// Longest description kept for an operation.
const MAX_DESCRIPTION_CHARS: usize = 300;
/// Confidence of a plan refined by the intelligence service (CONTRACTS.md §1c).
pub const SERVICE_CONFIDENCE: f64 = 0.9;

/// Spec fields that override the analysis.
#[derive(Clone, Debug, Default)]
pub struct Overrides<'a> {
    pub node_types: Option<&'a [NodeType]>,
    pub domain: Option<&'a str>,
    pub service_name: Option<&'a str>,
    /// Used for the service name when neither the spec nor the PRD title gives one
    /// (the NodeGeneration's name).
    pub fallback_name: &'a str,
    /// The user's steps for the system's orchestrator (`spec.workflow`).
    pub workflow: Option<&'a WorkflowSpec>,
}

/// What the intelligence service recommended (empty fields mean "no opinion").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntelligenceHints {
    pub node_type_hints: Vec<NodeType>,
    pub recommended_mixins: Vec<String>,
    pub domain: Option<String>,
    pub operations: Vec<String>,
    /// Names of the service's code patterns that match the PRD.
    pub patterns: Vec<String>,
    pub correlation_id: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub title: String,
    pub description: String,
    pub domain: String,
    pub service_name: String,
    pub source: IntelligenceSource,
    pub confidence: f64,
    pub external_systems: Vec<ExternalSystem>,
    pub dependencies: Vec<String>,
    /// Code patterns the intelligence service matched (empty for the built-in library).
    pub patterns: Vec<String>,
    pub nodes: Vec<PlannedNode>,
    /// Which node uses which (indices into `nodes`), for a PRD of several nodes.
    pub system: Option<SystemGraph>,
    /// The types several nodes of the system share (empty outside a system).
    pub entities: Vec<Entity>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedNode {
    pub node_type: NodeType,
    pub type_confidence: f64,
    pub domain: String,
    pub service: String,
    pub title: String,
    pub description: String,
    pub operations: Vec<Operation>,
    /// Sorted, unique.
    pub mixins: Vec<String>,
    pub performance: Performance,
    /// An orchestrator's steps over the nodes of its system (empty outside a system).
    pub workflow: Vec<PlannedStep>,
    /// A reducer's sources: the nodes whose results it folds from their terminal topics (the
    /// nodes it uses, when no workflow step brings their results to it).
    pub aggregates: Vec<NodeRef>,
}

/// Another node of the same system.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRef {
    pub node_type: NodeType,
    pub domain: String,
    pub service: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Operation {
    pub name: String,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExternalSystem {
    pub name: String,
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    #[error(
        "spec.serviceName {0:?} is not a valid service name (^[a-z][a-z0-9_]*$, at most 40 characters, not a Python keyword)"
    )]
    InvalidServiceName(String),
    #[error("spec.domain {0:?} is not a valid domain (^[a-z][a-z0-9_]*$, at most 40 characters)")]
    InvalidDomain(String),
    #[error(
        "the PRD describes {0} nodes; at most {MAX_NODES} are generated from one NodeGeneration"
    )]
    TooManyNodes(usize),
    #[error(transparent)]
    System(#[from] SystemError),
    #[error("spec.workflow: {0}")]
    InvalidWorkflow(String),
    #[error(transparent)]
    DataModel(#[from] DataModelError),
}

impl AnalysisError {
    pub fn reason(&self) -> &'static str {
        match self {
            AnalysisError::InvalidServiceName(_) => "InvalidServiceName",
            AnalysisError::InvalidDomain(_) => "InvalidDomain",
            AnalysisError::TooManyNodes(_) => "TooManyNodes",
            AnalysisError::System(SystemError::UnknownReference { .. }) => "UnknownNodeReference",
            AnalysisError::System(SystemError::Cycle(_)) => "SystemCycle",
            AnalysisError::InvalidWorkflow(_) => "InvalidWorkflow",
            AnalysisError::DataModel(_) => "InvalidDataModel",
        }
    }
}

/// Whether `keyword` occurs in `words`: short keywords (≤ 4 letters) as whole words (plural
/// allowed) so `log` does not match `logistics`; longer ones as word prefixes; multi-word
/// keywords as a phrase.
pub fn keyword_hits(words: &[String], joined: &str, keyword: &str) -> usize {
    if keyword.contains(' ') || keyword.contains('-') {
        let phrase = naming::words(keyword).join(" ");
        return joined.matches(&format!(" {phrase} ")).count();
    }
    words
        .iter()
        .filter(|w| {
            if keyword.len() <= 4 {
                w.as_str() == keyword || w.strip_suffix('s') == Some(keyword)
            } else {
                w.starts_with(keyword)
            }
        })
        .count()
}

struct TextIndex {
    words: Vec<String>,
    joined: String,
}

impl TextIndex {
    fn new(text: &str) -> Self {
        let words = naming::words(text);
        let joined = format!(" {} ", words.join(" "));
        TextIndex { words, joined }
    }
    fn hits(&self, keyword: &str) -> usize {
        keyword_hits(&self.words, &self.joined, keyword)
    }
    fn any(&self, keywords: &[String]) -> bool {
        keywords.iter().any(|k| self.hits(k) > 0)
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() > max {
        let mut s: String = text.chars().take(max).collect();
        s.push_str("...");
        s
    } else {
        text.to_string()
    }
}

/// Build the plan for a PRD.
pub fn plan(
    prd: &Prd,
    overrides: &Overrides<'_>,
    hints: Option<&IntelligenceHints>,
) -> Result<Plan, AnalysisError> {
    let lib = library();
    if let Some(s) = overrides.service_name
        && !is_identifier(s)
    {
        return Err(AnalysisError::InvalidServiceName(s.to_string()));
    }
    if let Some(d) = overrides.domain
        && !is_identifier(d)
    {
        return Err(AnalysisError::InvalidDomain(d.to_string()));
    }

    let all_text = prd.all_text();
    let index = TextIndex::new(&all_text);
    let title = prd
        .title
        .clone()
        .unwrap_or_else(|| overrides.fallback_name.to_string());
    let description = clip(
        prd.overview
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or(&title),
        MAX_DESCRIPTION_CHARS,
    );

    let domain = overrides
        .domain
        .map(str::to_string)
        .or_else(|| {
            hints
                .and_then(|h| h.domain.clone())
                .filter(|d| is_identifier(d))
        })
        .unwrap_or_else(|| detect_domain(&index, lib));
    let service_name = overrides
        .service_name
        .map(str::to_string)
        .or_else(|| {
            prd.title
                .as_deref()
                .and_then(|t| identifier_from(t, &lib.stopwords, 3))
        })
        .or_else(|| identifier_from(overrides.fallback_name, &lib.stopwords, 3))
        .unwrap_or_else(|| "service".to_string());

    let external_systems = lib
        .external_systems
        .iter()
        .filter(|s| index.any(&s.keywords))
        .map(|s| ExternalSystem {
            name: s.name.clone(),
            kind: s.kind.clone(),
        })
        .collect();

    let requirements: Vec<String> = if !prd.functional_requirements.is_empty() {
        prd.functional_requirements.clone()
    } else {
        prd.features.clone()
    };

    let mut nodes = Vec::new();
    let forced: Vec<NodeType> = overrides
        .node_types
        .map(|ts| {
            ts.iter()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        })
        .unwrap_or_default();
    if !forced.is_empty() {
        for t in forced {
            nodes.push(build_node(
                t,
                1.0,
                &service_name,
                &title,
                &description,
                &requirements,
                &index,
                &domain,
                hints,
            ));
        }
    } else if !prd.components.is_empty() {
        if prd.components.len() > MAX_NODES {
            return Err(AnalysisError::TooManyNodes(prd.components.len()));
        }
        for component in &prd.components {
            nodes.push(component_node(component, &domain, lib));
        }
    } else {
        let mut class = model().classify(&prd.classification_text());
        if !class.explicit
            && let Some(t) = hints.and_then(|h| h.node_type_hints.first())
        {
            class = Classification {
                node_type: *t,
                confidence: SERVICE_CONFIDENCE,
                explicit: false,
            };
        }
        nodes.push(build_node(
            class.node_type,
            class.confidence,
            &service_name,
            &title,
            &description,
            &requirements,
            &index,
            &domain,
            hints,
        ));
    }
    dedupe_services(&mut nodes);
    let mut entities = Vec::new();
    let system = match prd.components.len() {
        n if n >= 2 && n == nodes.len() => {
            let types: Vec<NodeType> = nodes.iter().map(|n| n.node_type).collect();
            let g = system::graph(&prd.components, &types)?;
            workflow::plan_workflows(&mut nodes, &g);
            if let Some(spec) = overrides.workflow {
                workflow::apply_workflow_spec(&mut nodes, spec)
                    .map_err(AnalysisError::InvalidWorkflow)?;
            }
            workflow::plan_aggregates(&mut nodes, &g);
            entities = entities::shared_entities(&prd.entities, &prd.components)?;
            Some(g)
        }
        _ if overrides.workflow.is_some() => {
            return Err(AnalysisError::InvalidWorkflow(
                "a workflow needs a PRD of several nodes (a ## Nodes section)".to_string(),
            ));
        }
        _ => None,
    };

    let (source, confidence) = match hints {
        Some(_) => (IntelligenceSource::Omniarchon, SERVICE_CONFIDENCE),
        None => (IntelligenceSource::Builtin, lib.confidence),
    };
    Ok(Plan {
        title,
        description,
        domain,
        service_name,
        source,
        confidence,
        external_systems,
        dependencies: prd
            .dependencies
            .iter()
            .map(|d| clip(d, MAX_DESCRIPTION_CHARS))
            .take(50)
            .collect(),
        patterns: hints.map(|h| h.patterns.clone()).unwrap_or_default(),
        nodes,
        system,
        entities,
    })
}

fn detect_domain(index: &TextIndex, lib: &Library) -> String {
    let mut best = ("general".to_string(), 0usize);
    for (domain, keywords) in &lib.domains {
        let hits: usize = keywords.iter().map(|k| index.hits(k)).sum();
        if hits > best.1 {
            best = (domain.clone(), hits);
        }
    }
    best.0
}

fn operations_from(requirements: &[String], node_type: NodeType, lib: &Library) -> Vec<Operation> {
    let mut seen = BTreeSet::new();
    let mut ops = Vec::new();
    for req in requirements {
        if ops.len() >= MAX_OPERATIONS {
            break;
        }
        let Some(mut name) = identifier_from(req, &lib.stopwords, 3) else {
            continue;
        };
        if seen.contains(&name) {
            let mut n = 2;
            while seen.contains(&format!("{name}_{n}")) {
                n += 1;
            }
            name = format!("{name}_{n}");
        }
        seen.insert(name.clone());
        ops.push(Operation {
            name,
            description: clip(req, MAX_DESCRIPTION_CHARS),
        });
    }
    if ops.is_empty() {
        ops = lib
            .patterns(node_type)
            .default_operations
            .iter()
            .map(|o| Operation {
                name: o.name.clone(),
                description: o.description.clone(),
            })
            .collect();
    }
    ops
}

fn mixins_for(
    node_type: NodeType,
    index: &TextIndex,
    lib: &Library,
    hints: Option<&IntelligenceHints>,
) -> Vec<String> {
    let mut mixins: BTreeSet<String> = lib
        .patterns(node_type)
        .default_mixins
        .iter()
        .cloned()
        .collect();
    for (mixin, keywords) in &lib.mixins {
        if index.any(keywords) {
            mixins.insert(mixin.clone());
        }
    }
    if matches!(node_type, NodeType::Effect | NodeType::Orchestrator) {
        // Members of the event bus publish their introspection through this mixin.
        mixins.insert("MixinEventBus".to_string());
    }
    if let Some(h) = hints {
        for m in &h.recommended_mixins {
            if lib.mixins.contains_key(m) {
                mixins.insert(m.clone());
            }
        }
    }
    mixins.into_iter().collect()
}

#[allow(clippy::too_many_arguments)]
fn build_node(
    node_type: NodeType,
    type_confidence: f64,
    service: &str,
    title: &str,
    description: &str,
    requirements: &[String],
    index: &TextIndex,
    domain: &str,
    hints: Option<&IntelligenceHints>,
) -> PlannedNode {
    let lib = library();
    let mut operations = operations_from(requirements, node_type, lib);
    if let Some(h) = hints {
        let extra: Vec<String> = h.operations.clone();
        let mut names: BTreeSet<String> = operations.iter().map(|o| o.name.clone()).collect();
        for op in extra {
            if operations.len() >= MAX_OPERATIONS {
                break;
            }
            if let Some(name) = identifier_from(&op, &lib.stopwords, 3)
                && names.insert(name.clone())
            {
                operations.push(Operation {
                    name,
                    description: clip(&op, MAX_DESCRIPTION_CHARS),
                });
            }
        }
    }
    PlannedNode {
        node_type,
        type_confidence,
        domain: domain.to_string(),
        service: service.to_string(),
        title: title.to_string(),
        description: description.to_string(),
        operations,
        mixins: mixins_for(node_type, index, lib, hints),
        performance: lib.patterns(node_type).performance.clone(),
        workflow: Vec::new(),
        aggregates: Vec::new(),
    }
}

fn component_node(component: &Component, domain: &str, lib: &Library) -> PlannedNode {
    let class = model().classify(&component.text());
    let service = identifier_from(&component.name, &lib.stopwords, 3)
        .unwrap_or_else(|| "component".to_string());
    let full = component.text();
    let index = TextIndex::new(&full);
    let description = clip(
        component.paragraphs.first().unwrap_or(&component.name),
        MAX_DESCRIPTION_CHARS,
    );
    PlannedNode {
        node_type: class.node_type,
        type_confidence: class.confidence,
        domain: domain.to_string(),
        service,
        title: component.name.clone(),
        description,
        operations: operations_from(&component.items, class.node_type, lib),
        mixins: mixins_for(class.node_type, &index, lib, None),
        performance: lib.patterns(class.node_type).performance.clone(),
        workflow: Vec::new(),
        aggregates: Vec::new(),
    }
}

/// Two nodes of the same service and type would share a directory: number them.
fn dedupe_services(nodes: &mut [PlannedNode]) {
    let mut seen = BTreeSet::new();
    for node in nodes.iter_mut() {
        let mut n = 2;
        let base = node.service.clone();
        while !seen.insert((node.service.clone(), node.node_type)) {
            node.service = format!("{base}_{n}");
            n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prd::parse;

    fn plan_of(md: &str) -> Plan {
        plan(
            &parse(md).unwrap(),
            &Overrides {
                fallback_name: "my-gen",
                ..Default::default()
            },
            None,
        )
        .unwrap()
    }

    #[test]
    fn single_node_plan_from_requirements() {
        let p = plan_of(
            "# PostgreSQL Order Writer\n## Overview\nPersists orders into PostgreSQL.\n## Functional Requirements\n- Write order records\n- Update order status with retry\n- Write order records\n",
        );
        assert_eq!(p.service_name, "postgresql_order_writer");
        assert_eq!(p.nodes.len(), 1);
        let n = &p.nodes[0];
        assert_eq!(n.node_type, NodeType::Effect);
        let ops: Vec<_> = n.operations.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            ops,
            [
                "write_order_records",
                "update_order_status",
                "write_order_records_2"
            ]
        );
        assert!(n.mixins.contains(&"MixinRetry".to_string()));
        assert!(n.mixins.contains(&"MixinEventBus".to_string()));
        assert_eq!(p.external_systems[0].name, "PostgreSQL");
        assert_eq!(p.source, IntelligenceSource::Builtin);
        assert!((p.confidence - 0.7).abs() < 1e-9);
    }

    #[test]
    fn components_make_several_nodes() {
        let p = plan_of(
            "# Shop\n## Overview\nA shop.\n## Nodes\n### Order Ingest\nWrites each incoming order to PostgreSQL and sends a confirmation email to the customer.\n### Price Scorer\nCalculates a price score.\n### Sales Rollup\nAggregates daily sales totals.\n### Checkout Flow\nCoordinates the checkout workflow.\n",
        );
        let types: Vec<_> = p.nodes.iter().map(|n| n.node_type).collect();
        assert_eq!(
            types,
            [
                NodeType::Effect,
                NodeType::Compute,
                NodeType::Reducer,
                NodeType::Orchestrator
            ]
        );
        assert_eq!(p.nodes[1].service, "price_scorer");
    }

    #[test]
    fn overrides_win_and_are_checked() {
        let prd = parse("# X\nSends emails to customers.").unwrap();
        let types = [NodeType::Compute, NodeType::Reducer];
        let o = Overrides {
            node_types: Some(&types),
            service_name: Some("mailer"),
            domain: Some("messaging"),
            fallback_name: "x",
            workflow: None,
        };
        let p = plan(&prd, &o, None).unwrap();
        assert_eq!(
            p.nodes.iter().map(|n| n.node_type).collect::<Vec<_>>(),
            types
        );
        assert_eq!(p.domain, "messaging");
        let bad = Overrides {
            service_name: Some("Robert'); DROP"),
            ..o
        };
        assert_eq!(
            plan(&prd, &bad, None).unwrap_err().reason(),
            "InvalidServiceName"
        );
    }

    #[test]
    fn hints_from_the_service_refine_the_plan() {
        let prd = parse("# Ledger\nKeeps running totals per account.").unwrap();
        let hints = IntelligenceHints {
            node_type_hints: vec![NodeType::Reducer],
            recommended_mixins: vec!["MixinCaching".into(), "NotAMixin".into()],
            operations: vec!["Rebuild ledger".into()],
            ..Default::default()
        };
        let p = plan(
            &prd,
            &Overrides {
                fallback_name: "x",
                ..Default::default()
            },
            Some(&hints),
        )
        .unwrap();
        assert_eq!(p.source, IntelligenceSource::Omniarchon);
        assert_eq!(p.nodes[0].node_type, NodeType::Reducer);
        assert!(p.nodes[0].mixins.contains(&"MixinCaching".to_string()));
        assert!(!p.nodes[0].mixins.contains(&"NotAMixin".to_string()));
        assert!(
            p.nodes[0]
                .operations
                .iter()
                .any(|o| o.name == "rebuild_ledger")
        );
    }
}
