//! The template context: everything a template may read about one node.
//!
//! Names are derived here, once, from the already-safe identifiers of the plan; free text is
//! carried as-is and escaped by the filters where a template places it.

use serde::Serialize;

use crate::analysis::{ExternalSystem, Performance, PlannedNode, PlannedStep};
use crate::api::NodeType;
use crate::naming::{dns_label, pascal};

/// Topic every event-bus member announces itself on (CONTRACTS.md §2).
pub const INTROSPECTION_TOPIC: &str = "onex.evt.platform.node-introspection.v1";

#[derive(Serialize, Debug, Clone)]
pub struct NodeContext {
    pub dir_name: String,
    /// The Python package of the node (the same as `dir_name`).
    pub package: String,
    /// The distribution name pip knows it by (`node-data-postgres-writer-effect`).
    pub distribution: String,
    pub class_name: String,
    /// The `omninode_runtime` base class (`NodeEffect`, …).
    pub runtime_base: String,
    /// The ONEX `EnumNodeType` value (`EFFECT_GENERIC`, …).
    pub onex_node_type: String,
    /// The runtime versions the node works with (`>=0.1.0,<0.2.0`).
    pub runtime_requirement: String,
    pub node_type: String,
    pub node_type_upper: String,
    pub type_title: String,
    pub domain: String,
    pub service: String,
    pub service_pascal: String,
    pub version: Version,
    pub version_str: String,
    pub title: String,
    pub description: String,
    pub generation_name: String,
    pub input_model: String,
    pub output_model: String,
    pub enum_name: String,
    pub input_module: String,
    pub output_module: String,
    pub enum_module: String,
    pub operations: Vec<OperationContext>,
    pub mixins: Vec<String>,
    pub external_systems: Vec<ExternalSystemContext>,
    pub dependencies: Vec<String>,
    pub introspection_topic: String,
    pub publish_topics: Vec<String>,
    pub subscribe_topics: Vec<String>,
    /// The topic a caller waits on for the result (`onex run-node`).
    pub terminal_event: String,
    pub performance: Performance,
    /// An orchestrator's steps over its system (empty outside a system).
    pub workflow: Vec<StepContext>,
    /// A reducer's sources: the nodes whose results it folds, and their terminal topics.
    pub aggregates: Vec<SourceContext>,
    /// The system's shared models this node imports (None outside a system, or when it uses
    /// none).
    pub shared: Option<NodeSharedContext>,
}

#[derive(Serialize, Debug, Clone)]
pub struct SourceContext {
    /// The package of the node.
    pub node: String,
    pub topic: String,
}

#[derive(Serialize, Debug, Clone, Copy)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

#[derive(Serialize, Debug, Clone)]
pub struct OperationContext {
    pub name: String,
    pub member: String,
    /// The handler module (`handler_<operation>`), under `<package>/handlers/`.
    pub module: String,
    /// The handler function (`handle_<operation>`).
    pub function: String,
    pub description: String,
}

#[derive(Serialize, Debug, Clone)]
pub struct ExternalSystemContext {
    pub name: String,
    pub kind: String,
}

/// The node's directory name: `node_<domain>_<service>_<type>`.
pub fn dir_name(node: &PlannedNode) -> String {
    dir_name_of(&node.domain, &node.service, node.node_type)
}

fn dir_name_of(domain: &str, service: &str, node_type: NodeType) -> String {
    format!("node_{domain}_{service}_{}", node_type.as_str())
}

/// The topic a node takes commands on.
pub fn command_topic(domain: &str, service: &str) -> String {
    format!("onex.cmd.{domain}.{}.v1", dns_label(service))
}

/// The topic a node publishes each result on (its terminal event).
pub fn terminal_topic(domain: &str, service: &str) -> String {
    format!("onex.evt.{domain}.{}-completed.v1", dns_label(service))
}

/// One step of an orchestrator's workflow, as `contract.yaml` states it.
#[derive(Serialize, Debug, Clone)]
pub struct StepContext {
    pub step_name: String,
    /// The ONEX step type: the kind of the node that runs it.
    pub step_type: String,
    /// The package of the node that runs it.
    pub node: String,
    pub operation: String,
    /// Empty for a local step (one of the orchestrator's own operations).
    pub command_topic: String,
    pub reply_topic: String,
    pub depends_on: Vec<String>,
    pub timeout_ms: u64,
    pub retry_count: u32,
    pub compensation_operation: Option<String>,
}

impl StepContext {
    fn new(step: &PlannedStep) -> Self {
        let remote = |topic: String| if step.local { String::new() } else { topic };
        StepContext {
            step_name: step.name.clone(),
            step_type: step.node_type.as_str().to_string(),
            node: dir_name_of(&step.domain, &step.service, step.node_type),
            operation: step.operation.clone(),
            command_topic: remote(command_topic(&step.domain, &step.service)),
            reply_topic: remote(terminal_topic(&step.domain, &step.service)),
            depends_on: step.depends_on.clone(),
            timeout_ms: step.timeout_ms,
            retry_count: step.retries,
            compensation_operation: step.compensation.clone(),
        }
    }
}

impl NodeContext {
    pub fn new(
        node: &PlannedNode,
        generation_name: &str,
        external: &[ExternalSystem],
        dependencies: &[String],
        shared: Option<NodeSharedContext>,
    ) -> Self {
        let t = node.node_type;
        let sp = pascal(&node.service);
        let version = Version {
            major: 1,
            minor: 0,
            patch: 0,
        };
        let dir_name = dir_name(node);
        let publish_topic = terminal_topic(&node.domain, &node.service);
        NodeContext {
            package: dir_name.clone(),
            distribution: dir_name.replace('_', "-"),
            dir_name,
            class_name: format!("Node{sp}{}", t.title()),
            runtime_base: format!("Node{}", t.title()),
            onex_node_type: format!("{}_GENERIC", t.as_str().to_uppercase()),
            runtime_requirement: crate::runtime_compat::requirement(),
            node_type: t.as_str().to_string(),
            node_type_upper: t.as_str().to_uppercase(),
            type_title: t.title().to_string(),
            domain: node.domain.clone(),
            service: node.service.clone(),
            service_pascal: sp.clone(),
            version,
            version_str: format!("{}.{}.{}", version.major, version.minor, version.patch),
            title: node.title.clone(),
            description: node.description.clone(),
            generation_name: generation_name.to_string(),
            input_model: format!("Model{sp}Input"),
            output_model: format!("Model{sp}Output"),
            enum_name: format!("Enum{sp}OperationType"),
            input_module: format!("model_{}_input", node.service),
            output_module: format!("model_{}_output", node.service),
            enum_module: format!("enum_{}_operation_type", node.service),
            operations: node
                .operations
                .iter()
                .map(|o| OperationContext {
                    name: o.name.clone(),
                    member: o.name.to_uppercase(),
                    module: format!("handler_{}", o.name),
                    function: format!("handle_{}", o.name),
                    description: o.description.clone(),
                })
                .collect(),
            mixins: node.mixins.clone(),
            external_systems: external
                .iter()
                .map(|e| ExternalSystemContext {
                    name: e.name.clone(),
                    kind: e.kind.clone(),
                })
                .collect(),
            dependencies: dependencies.to_vec(),
            introspection_topic: INTROSPECTION_TOPIC.to_string(),
            publish_topics: vec![publish_topic.clone()],
            // The command topic first (the runtime takes commands from it), then the results
            // a reducer folds.
            subscribe_topics: std::iter::once(command_topic(&node.domain, &node.service))
                .chain(
                    node.aggregates
                        .iter()
                        .map(|n| terminal_topic(&n.domain, &n.service)),
                )
                .collect(),
            terminal_event: publish_topic,
            performance: node.performance.clone(),
            workflow: node.workflow.iter().map(StepContext::new).collect(),
            aggregates: node
                .aggregates
                .iter()
                .map(|n| SourceContext {
                    node: dir_name_of(&n.domain, &n.service, n.node_type),
                    topic: terminal_topic(&n.domain, &n.service),
                })
                .collect(),
            shared,
        }
    }
}

/// The system's shared models package, as its templates read it.
#[derive(Serialize, Debug, Clone)]
pub struct SharedContext {
    /// `<domain>_<generation>_shared`: the package and its directory.
    pub package: String,
    pub distribution: String,
    pub version_str: String,
    pub generation_name: String,
    pub title: String,
    pub description: String,
    pub models: Vec<SharedModelContext>,
}

#[derive(Serialize, Debug, Clone)]
pub struct SharedModelContext {
    pub title: String,
    pub class_name: String,
    pub module: String,
    pub description: String,
    pub declared: bool,
    pub fields: Vec<FieldContext>,
    /// The standard-library import lines its module needs, in isort order.
    pub stdlib_imports: Vec<String>,
    pub uses_json_value: bool,
    #[serde(skip)]
    pub users: Vec<usize>,
}

#[derive(Serialize, Debug, Clone)]
pub struct FieldContext {
    pub name: String,
    pub annotation: String,
    pub required: bool,
    pub description: String,
}

/// What one node knows of the shared package: the models it imports.
#[derive(Serialize, Debug, Clone)]
pub struct NodeSharedContext {
    pub package: String,
    pub distribution: String,
    pub version_str: String,
    pub models: Vec<SharedModelRef>,
}

#[derive(Serialize, Debug, Clone)]
pub struct SharedModelRef {
    pub class_name: String,
    /// The module's dotted path (`commerce_orders_shared.models.model_order`).
    pub module: String,
}

/// The standard-library import lines (isort order) the annotations need.
fn stdlib_imports<'a>(annotations: impl Iterator<Item = &'a str>) -> Vec<String> {
    let names: std::collections::BTreeSet<&str> = annotations.collect();
    let datetime: Vec<&str> = ["date", "datetime"]
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    let mut lines = Vec::new();
    if !datetime.is_empty() {
        lines.push(format!("from datetime import {}", datetime.join(", ")));
    }
    if names.contains("Decimal") {
        lines.push("from decimal import Decimal".to_string());
    }
    lines
}

impl SharedContext {
    /// The shared package of a plan's system; None when it shares no type.
    pub fn new(plan: &crate::analysis::Plan, generation_name: &str) -> Option<Self> {
        if plan.entities.is_empty() {
            return None;
        }
        let stem = crate::naming::words(generation_name).join("_");
        let package = format!("{}_{stem}_shared", plan.domain);
        let mut models: Vec<SharedModelContext> = plan
            .entities
            .iter()
            .map(|e| {
                let imports = stdlib_imports(e.fields.iter().map(|f| f.annotation.as_str()));
                SharedModelContext {
                    title: e.title.clone(),
                    class_name: format!("Model{}", pascal(&e.ident)),
                    module: format!("model_{}", e.ident),
                    description: e.description.clone(),
                    declared: e.declared,
                    uses_json_value: e.fields.iter().any(|f| f.annotation.contains("JsonValue")),
                    fields: e
                        .fields
                        .iter()
                        .map(|f| FieldContext {
                            name: f.name.clone(),
                            annotation: f.annotation.clone(),
                            required: f.required,
                            description: f.description.clone(),
                        })
                        .collect(),
                    stdlib_imports: imports,
                    users: e.users.clone(),
                }
            })
            .collect();
        // Sorted as isort and `__all__` order them.
        models.sort_by(|a, b| a.class_name.cmp(&b.class_name));
        Some(SharedContext {
            distribution: package.replace('_', "-"),
            package,
            version_str: "1.0.0".to_string(),
            generation_name: generation_name.to_string(),
            title: format!("{} shared models", plan.title),
            description: "The types several nodes of this system exchange.".to_string(),
            models,
        })
    }

    /// What node `index` of the plan imports; None when it uses no shared type.
    pub fn for_node(&self, index: usize) -> Option<NodeSharedContext> {
        let models: Vec<SharedModelRef> = self
            .models
            .iter()
            .filter(|m| m.users.contains(&index))
            .map(|m| SharedModelRef {
                class_name: m.class_name.clone(),
                module: format!("{}.models.{}", self.package, m.module),
            })
            .collect();
        (!models.is_empty()).then(|| NodeSharedContext {
            package: self.package.clone(),
            distribution: self.distribution.clone(),
            version_str: self.version_str.clone(),
            models,
        })
    }
}
