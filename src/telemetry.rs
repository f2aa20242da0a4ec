//! Logs and the operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process
//! serves requests) and `/readyz` (caches are synced and, with leader election, the lease is
//! decided).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Install the global subscriber; `RUST_LOG` overrides `default_filter`. With an OTLP endpoint,
/// spans are also exported there (batched, on their own thread); the returned provider flushes
/// them when shut down. Without one no span is recorded beyond what the logs need.
pub fn init_logging(
    format: LogFormat,
    default_filter: &str,
    otlp_endpoint: Option<&str>,
) -> Option<SdkTracerProvider> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let provider = otlp_endpoint.and_then(|endpoint| match span_exporter(endpoint) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("tracing: no OTLP export to {endpoint}: {e}");
            None
        }
    });
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("omninode-operator"))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target().starts_with("omninode_operator")
            }))
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(otel);
    match format {
        LogFormat::Text => registry.with(fmt.with_filter(filter)).init(),
        LogFormat::Json => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_filter(filter),
            )
            .init(),
    }
    provider
}

/// A tracer provider exporting over OTLP/HTTP (protobuf) to `endpoint` (its `/v1/traces`).
fn span_exporter(
    endpoint: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("omninode-operator")
                .build(),
        )
        .build())
}

/// Shared state of the HTTP endpoints.
pub struct Health {
    registry: Registry,
    ready: AtomicBool,
}

impl Health {
    pub fn new(registry: Registry) -> Arc<Self> {
        Arc::new(Health {
            registry,
            ready: AtomicBool::new(false),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// `/metrics`, negotiated like Prometheus' own client: OpenMetrics when the scraper asks for it
/// (Prometheus does), the classic text format (0.0.4) otherwise — what `promtool check metrics`
/// and most other tools read.
async fn metrics(State(health): State<Arc<Health>>, headers: HeaderMap) -> impl IntoResponse {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match health.encode() {
        Ok(body) if wants_openmetrics => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            prometheus_text(&body),
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// OpenMetrics text → Prometheus text 0.0.4: counter families are named with their `_total`
/// suffix in `# HELP`/`# TYPE` (OpenMetrics names the family without it), `# UNIT` and `# EOF`
/// go, and so do exemplars. Samples are the same in both formats.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            // Exemplars (` # {trace_id="…"} 0.1`) exist only in OpenMetrics.
            None => out.push_str(line.split_once(" # ").map_or(line, |(sample, _)| sample)),
        }
        out.push('\n');
    }
    out
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

/// Bind the endpoints; the returned future serves them until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<impl Future<Output = std::io::Result<()>>> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    Ok(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_name_in_the_classic_format() {
        let om = "# HELP omninode_reconciles Reconciles.\n# TYPE omninode_reconciles counter\nomninode_reconciles_total{result=\"ok\"} 3\n# HELP lat Latency.\n# TYPE lat histogram\n# UNIT lat seconds\nlat_sum 1.0\nlat_bucket{le=\"1.0\"} 1 # {trace_id=\"ab\"} 0.5\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP omninode_reconciles_total Reconciles.\n# TYPE omninode_reconciles_total counter\nomninode_reconciles_total{result=\"ok\"} 3\n# HELP lat Latency.\n# TYPE lat histogram\nlat_sum 1.0\nlat_bucket{le=\"1.0\"} 1\n"
        );
    }
}
