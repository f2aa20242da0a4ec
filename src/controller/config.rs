//! Flags of `omninode-operator run`, each with an environment twin (the Helm chart sets them).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::intelligence::IntelligenceConfig;
use crate::telemetry::LogFormat;

/// The node runtime image GeneratedNode Deployments use when neither they nor their
/// NodeGeneration name one (built from `images/node-runtime`).
pub const DEFAULT_NODE_IMAGE: &str = "ghcr.io/omninode-ai/omninode-node-runtime:0.1.0";

#[derive(clap::Args, Clone, Debug)]
pub struct RunConfig {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Reconciles running at once, per controller.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Seconds between re-checks of a settled object.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 3600)]
    pub resync_seconds: u64,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter when `RUST_LOG` is unset.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// OTLP/HTTP endpoint (`http://collector:4318`) to export spans to; none: no spans are
    /// recorded (the `traceparent` headers still travel).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Elect a leader through a Lease so that only one replica writes (needed for replicas > 1).
    #[arg(long, env = "LEADER_ELECT", default_value_t = false, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    #[arg(long, env = "LEASE_NAME", default_value = "omninode-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds a lease stays valid without renewal.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Image of the node runtime for GeneratedNode Deployments.
    #[arg(long, env = "NODE_IMAGE", default_value = DEFAULT_NODE_IMAGE)]
    pub node_image: String,
    /// The `omninode-runtime` version `--node-image` carries (default: this operator's, which its
    /// own node image has); GeneratedNodes whose `spec.runtime` excludes it are not deployed.
    #[arg(long, env = "NODE_IMAGE_RUNTIME_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub node_image_runtime_version: String,
    /// Image of the init container that fetches a node's code from Git (`source.git`); needs
    /// `git` and `tar` (the node runtime image has both).
    #[arg(long, env = "GIT_IMAGE", default_value = DEFAULT_NODE_IMAGE)]
    pub git_image: String,
    /// Writable directory for the Git output's throw-away repositories.
    #[arg(long, env = "GIT_SCRATCH_DIR")]
    pub git_scratch_dir: Option<std::path::PathBuf>,
    /// `KAFKA_BOOTSTRAP_SERVERS` given to the nodes (default: the operator's own).
    #[arg(long, env = "NODE_KAFKA_BOOTSTRAP_SERVERS")]
    pub node_kafka_bootstrap_servers: Option<String>,
    /// Directory of custom templates replacing the embedded ones.
    #[arg(long, env = "OMNINODE_TEMPLATES_DIR")]
    pub templates: Option<PathBuf>,
    #[command(flatten)]
    pub intelligence: IntelligenceConfig,
}
