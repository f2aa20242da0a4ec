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
        let dir_name = dir_name(node);
        let topic_name = dns_label(&node.service);
        let publish_topic = format!("onex.evt.{}.{topic_name}-completed.v1", node.domain);
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
            subscribe_topics: vec![format!("onex.cmd.{}.{topic_name}.v1", node.domain)],
            terminal_event: publish_topic,
            performance: node.performance.clone(),
        }
    }
}
