//! `GeneratedNode`: one generated ONEX node and how to run it.
//!
//! It is usually created by a NodeGeneration, but must also work on its own (written by hand or
//! committed to Git by the Git output and synced by Argo CD).

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::conditions::{Condition, conditions_schema};
use super::node_generation::NodeType;

#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "codegen.omninode.ai",
    version = "v1alpha1",
    kind = "GeneratedNode",
    namespaced,
    status = "GeneratedNodeStatus",
    shortname = "gn",
    category = "omninode",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.nodeType"}"#,
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.serviceName"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GeneratedNodeSpec {
    pub node_type: NodeType,
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]{0,39}$"))]
    pub domain: String,
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]{0,39}$"))]
    pub service_name: String,
    /// Node version, `major.minor.patch`.
    #[serde(default = "default_version")]
    pub version: String,
    pub source: NodeSource,
    /// SHA-256 over the node's files; a change rolls the pods.
    #[serde(default)]
    pub content_hash: String,
    #[serde(default)]
    pub deploy: GeneratedNodeDeploy,
    /// The `omninode-runtime` versions the code works with (its contract.yaml's
    /// `runtime.version`, e.g. `>=0.1.0,<0.2.0`). When the node runs on the operator's node image,
    /// a range that excludes that image's runtime is a `RuntimeVersionUnsupported` condition
    /// instead of a Deployment; on other images the node itself refuses to start (exit code 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// GeneratedNodes (same namespace) this node uses in its system: its Deployment is made
    /// once they are all Ready, so a system rolls out in dependency order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

fn default_version() -> String {
    "1.0.0".to_string()
}

/// Where the node's files live.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.git)").message("exactly one of source.configMap and source.git must be set"))]
#[serde(rename_all = "camelCase")]
pub struct NodeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
    // Boxed (not a doc comment: that would change the CRD): mostly unset, and cached per object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<Box<GitSource>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct ConfigMapSource {
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    pub repository: String,
    pub revision: String,
    pub path: String,
    /// A package directory of the same revision the node imports too (its system's shared
    /// models), fetched beside the node's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_path: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeneratedNodeDeploy {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    // Boxed (not a doc comment: that would change the CRD): mostly unset, and cached per object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<ResourceRequirements>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Port of the node's health and metrics server.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_true() -> bool {
    true
}
fn default_replicas() -> i32 {
    1
}
fn default_port() -> i32 {
    8080
}

impl Default for GeneratedNodeDeploy {
    fn default() -> Self {
        GeneratedNodeDeploy {
            enabled: true,
            image: None,
            replicas: default_replicas(),
            resources: None,
            env: Vec::new(),
            port: default_port(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeneratedNodeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
}
