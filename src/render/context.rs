//! The template context: everything a template may read about one node.
//!
//! Names are derived here, once, from the already-safe identifiers of the plan; free text is
//! carried as-is and escaped by the filters where a template places it.

use serde::Serialize;

use crate::analysis::{ExternalSystem, Performance, PlannedNode};
use crate::naming::{dns_label, pascal};

/// Topic every event-bus member announces itself on (CONTRACTS.md §2).
pub const INTROSPECTION_TOPIC: &str = "onex.evt.platform.node-introspection.v1";

#[derive(Serialize, Debug, Clone)]
pub struct NodeContext {
    pub dir_name: String,
    pub class_name: String,
    pub node_type: String,
    pub node_type_upper: String,
    pub type_title: String,
    pub domain: String,
    pub service: String,
    pub service_pascal: String,
    pub version: Version,
    pub version_str: String,
    pub version_dir: String,
    pub title: String,
    pub description: String,
    pub generation_name: String,
    pub entry_point: String,
    pub input_model: String,
    pub output_model: String,
    pub config_model: String,
    pub enum_name: String,
    pub input_module: String,
    pub output_module: String,
    pub config_module: String,
    pub enum_module: String,
    pub operations: Vec<OperationContext>,
    pub mixins: Vec<String>,
    pub capabilities: Vec<String>,
    pub external_systems: Vec<ExternalSystemContext>,
    pub dependencies: Vec<String>,
    pub joins_event_bus: bool,
    pub introspection_topic: String,
    pub publish_topics: Vec<String>,
    pub subscribe_topics: Vec<String>,
    pub performance: Performance,
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
    pub handler: String,
    pub description: String,
}

#[derive(Serialize, Debug, Clone)]
pub struct ExternalSystemContext {
    pub name: String,
    pub kind: String,
}

/// The node's directory name: `node_<domain>_<service>_<type>`.
pub fn dir_name(node: &PlannedNode) -> String {
    format!(
        "node_{}_{}_{}",
        node.domain,
        node.service,
        node.node_type.as_str()
    )
}

impl NodeContext {
    pub fn new(
        node: &PlannedNode,
        generation_name: &str,
        external: &[ExternalSystem],
        dependencies: &[String],
    ) -> Self {
        let t = node.node_type;
        let sp = pascal(&node.service);
        let version = Version {
            major: 1,
            minor: 0,
            patch: 0,
        };
        let entry_point = match t {
            crate::api::NodeType::Effect => "process_effect",
            crate::api::NodeType::Compute => "process_compute",
            crate::api::NodeType::Reducer => "process_reduction",
            crate::api::NodeType::Orchestrator => "process_orchestration",
        };
        let joins_event_bus = matches!(
            t,
            crate::api::NodeType::Effect | crate::api::NodeType::Orchestrator
        );
        let topic_name = dns_label(&node.service);
        NodeContext {
            dir_name: dir_name(node),
            class_name: format!("Node{sp}{}", t.title()),
            node_type: t.as_str().to_string(),
            node_type_upper: t.as_str().to_uppercase(),
            type_title: t.title().to_string(),
            domain: node.domain.clone(),
            service: node.service.clone(),
            service_pascal: sp.clone(),
            version,
            version_str: format!("{}.{}.{}", version.major, version.minor, version.patch),
            version_dir: format!("v{}_{}_{}", version.major, version.minor, version.patch),
            title: node.title.clone(),
            description: node.description.clone(),
            generation_name: generation_name.to_string(),
            entry_point: entry_point.to_string(),
            input_model: format!("Model{sp}Input"),
            output_model: format!("Model{sp}Output"),
            config_model: format!("Model{sp}Config"),
            enum_name: format!("Enum{sp}OperationType"),
            input_module: format!("model_{}_input", node.service),
            output_module: format!("model_{}_output", node.service),
            config_module: format!("model_{}_config", node.service),
            enum_module: format!("enum_{}_operation_type", node.service),
            operations: node
                .operations
                .iter()
                .map(|o| OperationContext {
                    name: o.name.clone(),
                    member: o.name.to_uppercase(),
                    handler: format!("_handle_{}", o.name),
                    description: o.description.clone(),
                })
                .collect(),
            mixins: node.mixins.clone(),
            capabilities: node.operations.iter().map(|o| o.name.clone()).collect(),
            external_systems: external
                .iter()
                .map(|e| ExternalSystemContext {
                    name: e.name.clone(),
                    kind: e.kind.clone(),
                })
                .collect(),
            dependencies: dependencies.to_vec(),
            joins_event_bus,
            introspection_topic: INTROSPECTION_TOPIC.to_string(),
            publish_topics: vec![format!(
                "onex.evt.{}.{topic_name}-completed.v1",
                node.domain
            )],
            subscribe_topics: vec![format!("onex.cmd.{}.{topic_name}.v1", node.domain)],
            performance: node.performance.clone(),
        }
    }
}
