//! Prometheus metrics of the controllers, and the count of every request the operator sends to
//! the API server (by verb and resource) — how "writes per NodeGeneration" is measured.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::progress::GenerationProgress;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: String,
    /// `success` or `error`
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// get, list, watch, create, update, patch, delete
    pub verb: String,
    /// Plural resource, with the subresource after a slash (`nodegenerations/status`).
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `succeeded` or `failed`
    pub outcome: String,
    /// The `Ready` reason (CamelCase, a closed set the operator writes).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `succeeded` or `failed`
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node_type: String,
    /// A domain of the built-in library, or `other` (a user's `spec.domain` is free text).
    pub domain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// analysis, render, quality, publish or deploy
    pub stage: &'static str,
}

/// The exemplar of a stage duration: the trace of the generation it belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `pushed`, `no_changes` or `failed`
    pub result: &'static str,
}

/// The domain as a label: one of the built-in library's (a closed set) or `other`.
pub fn domain_label(domain: &str) -> String {
    if crate::analysis::library().domains.contains_key(domain) {
        domain.to_string()
    } else {
        "other".to_string()
    }
}

/// The stages of a generation whose durations are measured, in order.
pub const STAGES: [&str; 5] = ["analysis", "render", "quality", "publish", "deploy"];

#[derive(Clone)]
pub struct ControllerMetrics {
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_seconds: Family<ControllerLabel, Histogram>,
    pub api_requests: Family<ApiLabels, Counter>,
    /// NodeGenerations settled, counted when their `Ready` condition changes.
    pub generations: Family<OutcomeLabels, Counter>,
    /// The same count by outcome alone, both series there from the start: a rate() over a
    /// series that first appears at 1 misses that first one, and a new failure reason would
    /// otherwise go unseen by the failure-rate alert.
    pub settled: Family<OutcomeLabel, Counter>,
    /// How long analysis, rendering and the quality gate took for one generation.
    pub generation_seconds: Histogram,
    /// The overall quality score of every node generated.
    pub node_quality: Family<NodeLabels, Histogram>,
    /// Seconds per stage: the first three per generation, publish per generation that reaches
    /// it, deploy per node from its rollout's start to Ready.
    pub stage_seconds: Family<StageLabel, HistogramWithExemplars<TraceExemplar>>,
    /// Git output pushes by result.
    pub git_pushes: Family<ResultLabel, Counter>,
    /// 1 on the replica that reconciles (the lease holder, or the only replica).
    pub leader: Gauge,
    /// Reconciles running now, by controller (at most the controller's concurrency).
    pub in_flight: Family<ControllerLabel, Gauge>,
    /// Generations in progress and the age of the oldest, sampled at scrape time.
    pub progress: GenerationProgress,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics {
            reconciles: Family::default(),
            reconcile_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
            api_requests: Family::default(),
            generations: Family::default(),
            settled: Family::default(),
            generation_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            node_quality: Family::new_with_constructor(|| {
                Histogram::new([0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0])
            }),
            stage_seconds: Family::new_with_constructor(|| {
                HistogramWithExemplars::new(
                    [
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    ]
                    .into_iter(),
                )
            }),
            git_pushes: Family::default(),
            leader: Gauge::default(),
            in_flight: Family::default(),
            progress: GenerationProgress::default(),
        }
    }
}

impl ControllerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        // Every controller's series exist from the start, at 0: an alert's rate() has a series
        // to read before the first reconcile ends (and a scrape right after one sees it).
        for controller in [
            super::node_generation::CONTROLLER,
            super::generated_node::CONTROLLER,
        ] {
            let label = ControllerLabel {
                controller: controller.to_string(),
            };
            let _ = self.in_flight.get_or_create(&label);
            let _ = self.reconcile_seconds.get_or_create(&label);
            for result in ["success", "error"] {
                let _ = self.reconciles.get_or_create(&ReconcileLabels {
                    controller: controller.to_string(),
                    result: result.to_string(),
                });
            }
        }
        for outcome in ["succeeded", "failed"] {
            let _ = self.settled.get_or_create(&OutcomeLabel { outcome });
        }
        for stage in STAGES {
            let _ = self.stage_seconds.get_or_create(&StageLabel { stage });
        }
        for result in ["pushed", "no_changes", "failed"] {
            let _ = self.git_pushes.get_or_create(&ResultLabel { result });
        }
        let r = registry.sub_registry_with_prefix("omninode");
        r.register(
            "reconciles",
            "Reconciles by controller and result",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconciles by controller",
            self.reconcile_seconds.clone(),
        );
        r.register(
            "api_requests",
            "Requests sent to the Kubernetes API server by verb and resource",
            self.api_requests.clone(),
        );
        r.register(
            "generations",
            "NodeGenerations settled, by outcome and Ready reason",
            self.generations.clone(),
        );
        r.register(
            "generations_settled",
            "NodeGenerations settled, by outcome (both series from the start)",
            self.settled.clone(),
        );
        r.register(
            "generation_duration_seconds",
            "Analysis, rendering and quality gate of one generation",
            self.generation_seconds.clone(),
        );
        r.register(
            "node_quality_score",
            "Overall quality score of each generated node, by node type and domain",
            self.node_quality.clone(),
        );
        r.register(
            "stage_duration_seconds",
            "Duration of each stage: analysis, render, quality and publish per generation, deploy per node",
            self.stage_seconds.clone(),
        );
        r.register(
            "git_pushes",
            "Pushes of Git output by result",
            self.git_pushes.clone(),
        );
        r.register(
            "leader",
            "1 while this replica reconciles (holds the lease, or runs alone)",
            self.leader.clone(),
        );
        r.register(
            "reconciles_in_flight",
            "Reconciles running now, by controller",
            self.in_flight.clone(),
        );
        r.register_collector(Box::new(self.progress.clone()));
    }

    /// Count a reconcile as running until the guard drops (also when its future is cancelled).
    pub fn running(&self, controller: &str) -> InFlight {
        let gauge = self
            .in_flight
            .get_or_create(&ControllerLabel {
                controller: controller.to_string(),
            })
            .clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// A stage took `seconds`; the generation's trace id (the current one, unless given) is its
    /// exemplar, so a slow bucket leads to its trace.
    pub fn stage(&self, stage: &'static str, seconds: f64, trace_id: Option<String>) {
        let exemplar = trace_id
            .or_else(crate::trace::current_trace_id)
            .map(|trace_id| TraceExemplar { trace_id });
        self.stage_seconds
            .get_or_create(&StageLabel { stage })
            .observe(seconds, exemplar, None);
    }

    pub fn git_push(&self, result: &'static str) {
        self.git_pushes.get_or_create(&ResultLabel { result }).inc();
    }

    /// A generation settled: `Ready` became `ready` with `reason`.
    pub fn settled(&self, ready: bool, reason: &str) {
        let outcome = if ready { "succeeded" } else { "failed" };
        self.generations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
                reason: reason.to_string(),
            })
            .inc();
        self.settled.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn observe(&self, controller: &str, ok: bool, took: Duration) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                controller: controller.to_string(),
                result: if ok { "success" } else { "error" }.to_string(),
            })
            .inc();
        self.reconcile_seconds
            .get_or_create(&ControllerLabel {
                controller: controller.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// A tower layer for the kube client that counts each request.
    pub fn api_layer<B>(
        &self,
    ) -> tower::util::MapRequestLayer<
        impl FnMut(http::Request<B>) -> http::Request<B> + Clone + use<B>,
    > {
        let requests = self.api_requests.clone();
        tower::util::MapRequestLayer::new(move |req: http::Request<B>| {
            requests.get_or_create(&api_labels(&req)).inc();
            req
        })
    }

    /// Sum of write requests (create, update, patch, delete) so far.
    pub fn writes(&self) -> u64 {
        let mut total = 0;
        for verb in ["create", "update", "patch", "delete"] {
            for resource in WRITE_RESOURCES {
                total += self
                    .api_requests
                    .get(&ApiLabels {
                        verb: verb.to_string(),
                        resource: resource.to_string(),
                    })
                    .map(|c| c.get())
                    .unwrap_or(0);
            }
        }
        total
    }
}

/// A running reconcile, counted in `omninode_reconciles_in_flight` while it lives.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Resources the operator writes.
const WRITE_RESOURCES: [&str; 10] = [
    "nodegenerations",
    "nodegenerations/status",
    "generatednodes",
    "generatednodes/status",
    "configmaps",
    "deployments",
    "services",
    "events",
    "leases",
    "customresourcedefinitions",
];

/// Verb and resource of an API request, from its method, path and query.
pub fn api_labels<B>(req: &http::Request<B>) -> ApiLabels {
    let path = req.uri().path();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/… or /apis/<group>/<version>/…
    let rest: &[&str] = match segments.first() {
        Some(&"api") => segments.get(2..).unwrap_or(&[]),
        Some(&"apis") => segments.get(3..).unwrap_or(&[]),
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let resource = match rest {
        [] => "other".to_string(),
        [plural] | [plural, _] => plural.to_string(),
        [plural, _, sub, ..] => format!("{plural}/{sub}"),
    };
    let named = matches!(rest, [_, _, ..]);
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *req.method() {
        http::Method::GET if watch => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    };
    ApiLabels {
        verb: verb.to_string(),
        resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(method: &str, uri: &str) -> (String, String) {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap();
        let l = api_labels(&req);
        (l.verb, l.resource)
    }

    #[test]
    fn requests_are_labelled_by_verb_and_resource() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            labels(
                "PATCH",
                "/apis/codegen.omninode.ai/v1alpha1/namespaces/ns/nodegenerations/x/status?fieldManager=o"
            ),
            s("patch", "nodegenerations/status")
        );
        assert_eq!(
            labels(
                "GET",
                "/api/v1/namespaces/ns/configmaps?watch=true&labelSelector=a"
            ),
            s("watch", "configmaps")
        );
        assert_eq!(labels("GET", "/api/v1/configmaps"), s("list", "configmaps"));
        assert_eq!(
            labels("GET", "/api/v1/namespaces/ns/configmaps/prd"),
            s("get", "configmaps")
        );
        assert_eq!(
            labels("POST", "/apis/events.k8s.io/v1/namespaces/ns/events"),
            s("create", "events")
        );
        assert_eq!(
            labels("GET", "/api/v1/namespaces/ns"),
            s("get", "namespaces")
        );
        assert_eq!(labels("GET", "/version"), s("list", "other"));
    }
}
