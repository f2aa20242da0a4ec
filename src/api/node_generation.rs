//! `NodeGeneration`: a PRD in, generated and deployed ONEX nodes out.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{Condition, conditions_schema};

/// What the user asks for: a PRD (inline or from a ConfigMap) and optional overrides.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "codegen.omninode.ai",
    version = "v1alpha1",
    kind = "NodeGeneration",
    namespaced,
    status = "NodeGenerationStatus",
    shortname = "ng",
    category = "omninode",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodeCount"}"#,
    printcolumn = r#"{"name":"Quality","type":"number","jsonPath":".status.quality"}"#,
    printcolumn = r#"{"name":"System","type":"string","jsonPath":".status.system.ready"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.prd) != has(self.prdFrom)").message("exactly one of spec.prd and spec.prdFrom must be set"))]
#[serde(rename_all = "camelCase")]
pub struct NodeGenerationSpec {
    /// The PRD as inline Markdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1048576))]
    pub prd: Option<String>,
    /// The PRD from a key of a ConfigMap in the same namespace.
    // Boxed (not a doc comment: that would change the CRD): mostly unset, and cached per object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prd_from: Option<Box<PrdSource>>,
    /// Build exactly these node types instead of the ones the analysis picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_types: Option<Vec<NodeType>>,
    /// Domain override (e.g. `data`, `api`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]{0,39}$"))]
    pub domain: Option<String>,
    /// Service name override; becomes part of every generated name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]{0,39}$"))]
    pub service_name: Option<String>,
    #[serde(default)]
    pub intelligence: IntelligenceSpec,
    #[serde(default)]
    pub quality: QualitySpec,
    #[serde(default)]
    pub output: OutputSpec,
    #[serde(default)]
    pub deploy: DeploySpec,
    /// The user's handler modules, for ConfigMap output (Git output keeps them on the branch):
    /// they replace the generated defaults in the published code and the deployed node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handlers: Option<HandlersSource>,
    /// The steps of the system's orchestrator, replacing the ones derived from the PRD (a
    /// workflow template): for a PRD of several nodes with one orchestrator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowSpec>,
    /// Stop all work on this object while true.
    #[serde(default)]
    pub suspend: bool,
}

/// Where the user's handler modules live.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandlersSource {
    /// A ConfigMap in the same namespace whose keys are the handler files' paths in the node
    /// directory with `/` written as `-`, as in the code ConfigMaps
    /// (`node_data_orders_writer_effect-handlers-handler_insert_order.py`).
    pub config_map: LocalConfigMapRef,
}

/// A ConfigMap in the object's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct LocalConfigMapRef {
    pub name: String,
}

/// Where a PRD kept outside the NodeGeneration lives.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrdSource {
    pub config_map_key_ref: ConfigMapKeyRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct ConfigMapKeyRef {
    pub name: String,
    pub key: String,
}

/// The four ONEX node types.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum NodeType {
    Effect,
    Compute,
    Reducer,
    Orchestrator,
}

impl NodeType {
    pub const ALL: [NodeType; 4] = [
        NodeType::Effect,
        NodeType::Compute,
        NodeType::Reducer,
        NodeType::Orchestrator,
    ];

    /// Lowercase wire and file-name form (`effect`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Effect => "effect",
            NodeType::Compute => "compute",
            NodeType::Reducer => "reducer",
            NodeType::Orchestrator => "orchestrator",
        }
    }

    /// Title form used in class names (`Effect`).
    pub fn title(self) -> &'static str {
        match self {
            NodeType::Effect => "Effect",
            NodeType::Compute => "Compute",
            NodeType::Reducer => "Reducer",
            NodeType::Orchestrator => "Orchestrator",
        }
    }

    pub fn parse(word: &str) -> Option<NodeType> {
        NodeType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(word))
    }
}

impl std::fmt::Display for NodeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.title())
    }
}

/// How the intelligence service is consulted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum IntelligenceMode {
    /// Ask the service, fall back to the built-in pattern library.
    #[default]
    Auto,
    /// Fail the generation when the service does not answer.
    Required,
    /// Never ask; use the built-in pattern library.
    Disabled,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntelligenceSpec {
    #[serde(default)]
    pub mode: IntelligenceMode,
    /// How long to wait for the service before falling back.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 120))]
    pub timeout_seconds: u32,
}

fn default_timeout_seconds() -> u32 {
    5
}

impl Default for IntelligenceSpec {
    fn default() -> Self {
        IntelligenceSpec {
            mode: IntelligenceMode::Auto,
            timeout_seconds: default_timeout_seconds(),
        }
    }
}

/// An orchestrator's workflow, as the user wants it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    #[schemars(length(min = 1, max = 32))]
    pub steps: Vec<WorkflowStepSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStepSpec {
    /// Unique among the steps (`^[a-z][a-z0-9_]*$`).
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]{0,62}$"))]
    pub name: String,
    /// The node that runs it: its heading in the PRD or its service name; the orchestrator
    /// itself for one of its own operations.
    pub node: String,
    /// An operation of that node (as in `status.analysis.nodes[].operations`).
    pub operation: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Per attempt (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: Option<u32>,
    /// Extra attempts after a timeout or a failed reply (default 1 for another node's step,
    /// 0 for the orchestrator's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10))]
    pub retries: Option<u32>,
    /// The operation of the same node that undoes the step when a later one fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
}

/// The quality gate.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QualitySpec {
    /// Minimum overall score (0–1).
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: f64,
    /// Minimum ONEX compliance score (0–1).
    #[serde(default = "default_onex_threshold")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub onex_threshold: f64,
}

fn default_threshold() -> f64 {
    0.8
}
fn default_onex_threshold() -> f64 {
    0.7
}

impl Default for QualitySpec {
    fn default() -> Self {
        QualitySpec {
            threshold: default_threshold(),
            onex_threshold: default_onex_threshold(),
        }
    }
}

/// Where generated files go: ConfigMaps (default) or a Git repository.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(validation = Rule::new("!(has(self.configMap) && has(self.git))").message("set at most one of output.configMap and output.git"))]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapOutput>,
    // Boxed (not a doc comment: that would change the CRD): mostly unset, and cached per object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<Box<GitOutput>>,
}

/// ConfigMap output; one ConfigMap per node (no options yet).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
pub struct ConfigMapOutput {}

/// Git output: commit the generated nodes and their GeneratedNode manifests.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitOutput {
    /// Repository URL (https, ssh or file).
    pub repository: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Path prefix inside the repository.
    #[serde(default)]
    pub path: String,
    /// Secret with `username`/`password`, `token`, or `ssh-privatekey`/`known_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<GitAuthor>,
    /// Commit message template (minijinja).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_template: Option<String>,
}

fn default_branch() -> String {
    "main".to_string()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct SecretRef {
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct GitAuthor {
    pub name: String,
    pub email: String,
}

/// How generated nodes are deployed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploySpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Node runtime image; the operator's default when unset.
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
}

fn default_true() -> bool {
    true
}
fn default_replicas() -> i32 {
    1
}

impl Default for DeploySpec {
    fn default() -> Self {
        DeploySpec {
            enabled: true,
            image: None,
            replicas: default_replicas(),
            resources: None,
            env: Vec::new(),
        }
    }
}

/// Display-only summary of the conditions.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Analyzing,
    Generating,
    Validating,
    Publishing,
    Deploying,
    Completed,
    Failed,
}

/// The phase as a plain string enum: schemars would add `null` to the enum of an `Option`,
/// which a structural schema does not need (the field is simply optional).
fn phase_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<Phase>()
}

/// What the operator observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeGenerationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "phase_schema")]
    pub phase: Option<Phase>,
    /// Number of generated nodes (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<i32>,
    /// Lowest overall quality score over the nodes (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    // Boxed (not a doc comment: that would change the CRD): the cached copies drop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Box<AnalysisStatus>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputStatus>,
    /// The system of a multi-node PRD: which node uses which, and each node's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemStatus>,
    /// SHA-256 over the spec, the resolved PRD and the operator's templates when this status was
    /// computed: the controller regenerates only when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_hash: Option<String>,
    /// W3C trace id of the observed generation (derived from the UID and `metadata.generation`):
    /// the operator's spans, the `traceparent` of its Kafka messages and the log lines of the
    /// nodes it deployed carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The nodes of a system in rollout order (every node after the nodes it uses).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemStatus {
    /// Nodes Ready of all, `2/4` (a column of `kubectl get ng`).
    pub ready: String,
    pub nodes: Vec<SystemNodeStatus>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemNodeStatus {
    /// The GeneratedNode.
    pub name: String,
    /// The node's heading in the PRD.
    pub title: String,
    /// The GeneratedNodes this node uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<String>,
    /// Those of `uses` read from the PRD's prose, not from a `Uses:`/`Depends on:` line: a
    /// guess to check (a wiring line makes an edge exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guessed: Vec<String>,
    /// `Ready`, or why not yet: the GeneratedNode's `Ready` reason (`WaitingForDependencies`,
    /// `RollingOut`, …), `Generated` before it exists.
    pub state: String,
}

impl SystemStatus {
    /// Set each node's state with `state_of` (GeneratedNode name → state) and recount.
    pub fn refresh(&mut self, state_of: impl Fn(&str) -> Option<String>) {
        for node in &mut self.nodes {
            if let Some(state) = state_of(&node.name) {
                node.state = state;
            }
        }
        let ready = self.nodes.iter().filter(|n| n.state == "Ready").count();
        self.ready = format!("{ready}/{}", self.nodes.len());
    }
}

/// Where the analysis came from.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IntelligenceSource {
    Omniarchon,
    Builtin,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// Who planned the nodes: `omniarchon` when the service's codegen analysis answered.
    pub source: IntelligenceSource,
    /// Who scored the code: `omniarchon` when the service's code analysis answered for every
    /// node (each node's `serviceQuality`), `builtin` when only the local quality gate did.
    /// The two contract families are independent: today's live service answers only this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_source: Option<IntelligenceSource>,
    /// Confidence of the source (0.7 built-in, 0.9 service).
    pub confidence: f64,
    pub correlation_id: String,
    pub domain: String,
    pub service_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_systems: Vec<String>,
    /// Code patterns the intelligence service matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    #[serde(default)]
    pub nodes: Vec<PlannedNodeStatus>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedNodeStatus {
    #[serde(rename = "type")]
    pub node_type: NodeType,
    pub service_name: String,
    /// Confidence of the node-type classification.
    pub confidence: f64,
    #[serde(default)]
    pub operations: Vec<String>,
    #[serde(default)]
    pub mixins: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Name of the GeneratedNode.
    pub name: String,
    #[serde(rename = "type")]
    pub node_type: NodeType,
    pub quality: f64,
    pub onex_score: f64,
    pub passed: bool,
    pub files: i32,
    pub content_hash: String,
    /// Quality score from the intelligence service, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_quality: Option<f64>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_maps: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitOutputStatus>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct GitOutputStatus {
    pub repository: String,
    pub branch: String,
    pub path: String,
    pub commit: String,
}
