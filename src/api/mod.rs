//! The two custom resources of `codegen.omninode.ai/v1alpha1` and their shared condition type.
//!
//! These types are the contract with users (what they `kubectl apply`) and with the API server
//! (the CRD schema is generated from them; `crds/` holds that output).

mod conditions;
mod generated_node;
mod node_generation;

pub use conditions::{Condition, ConditionStatus, conditions_schema};
pub use generated_node::{
    ConfigMapSource, GeneratedNode, GeneratedNodeDeploy, GeneratedNodeSpec, GeneratedNodeStatus,
    GitSource, NodeSource,
};
pub use node_generation::*;

/// API group of both kinds.
pub const GROUP: &str = "codegen.omninode.ai";
/// Field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "omninode-operator";
/// Label keys put on everything the operator creates.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_GENERATION: &str = "codegen.omninode.ai/generation";
pub const LABEL_NODE: &str = "codegen.omninode.ai/node";
/// The W3C `traceparent` of the generation that last changed a GeneratedNode: its Deployment
/// gives it to the node as `TRACEPARENT`, so the node continues that trace.
pub const ANNOTATION_TRACEPARENT: &str = "codegen.omninode.ai/traceparent";

/// Both CRDs, in the order `crds/` and `omninode-operator crd` list them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![NodeGeneration::crd(), GeneratedNode::crd()]
}

/// Each CRD as `(file name, YAML)`, exactly as committed in `crds/`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_norway::Error> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            Ok((name, format!("---\n{}", serde_norway::to_string(&crd)?)))
        })
        .collect()
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    Ok(crd_files()?.into_iter().map(|(_, yaml)| yaml).collect())
}
