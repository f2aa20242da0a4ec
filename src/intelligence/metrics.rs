//! Prometheus metrics of the intelligence client, registered into the process's registry (the
//! controller serves them on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::breaker::State;
use super::client::ContractFamily;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// code_analysis or codegen
    pub family: &'static str,
    pub operation: String,
    /// success, timeout, error, fallback, circuit_open
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    /// code_analysis or codegen
    pub family: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency_seconds: Family<FamilyLabels, Histogram>,
    /// Generations (or node scores) that used the built-in library because the family's answer
    /// did not come.
    pub fallbacks: Family<FamilyLabels, Counter>,
    pub mismatched_dropped: Counter,
    pub dead_lettered: Counter,
    pub circuit_state: Family<FamilyLabels, Gauge>,
    /// 1 while the broker is reachable and the reply consumer assigned.
    pub broker_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            latency_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
            fallbacks: Family::default(),
            mismatched_dropped: Counter::default(),
            dead_lettered: Counter::default(),
            circuit_state: Family::default(),
            broker_up: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("omninode_intelligence");
        r.register(
            "requests",
            "Intelligence requests by contract family, operation and outcome",
            self.requests.clone(),
        );
        r.register(
            "request_latency_seconds",
            "Round trip of answered requests, by contract family",
            self.latency_seconds.clone(),
        );
        r.register(
            "fallbacks",
            "Answers taken from the built-in library instead, by contract family",
            self.fallbacks.clone(),
        );
        r.register(
            "replies_dropped",
            "Replies no pending request was waiting for (late, duplicate or foreign)",
            self.mismatched_dropped.clone(),
        );
        r.register(
            "replies_dead_lettered",
            "Undecodable replies sent to a dead-letter topic",
            self.dead_lettered.clone(),
        );
        r.register(
            "circuit_state",
            "Circuit breaker of each contract family: 0 closed, 1 half-open, 2 open",
            self.circuit_state.clone(),
        );
        r.register(
            "broker_up",
            "1 while the Kafka broker is reachable and replies are consumed",
            self.broker_up.clone(),
        );
        // Both families show from the start: closed, with no fallback yet (a rate() over a
        // series that appears at 1 would miss the first one).
        for family in ContractFamily::ALL {
            self.set_circuit(family, State::Closed);
            let label = FamilyLabels {
                family: family.as_str(),
            };
            let _ = self.fallbacks.get_or_create(&label);
            let _ = self.latency_seconds.get_or_create(&label);
        }
    }

    pub fn set_circuit(&self, family: ContractFamily, state: State) {
        self.circuit_state
            .get_or_create(&FamilyLabels {
                family: family.as_str(),
            })
            .set(state.gauge());
    }

    pub fn count(&self, family: ContractFamily, operation: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                family: family.as_str(),
                operation: operation.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn observe_latency(&self, family: ContractFamily, seconds: f64) {
        self.latency_seconds
            .get_or_create(&FamilyLabels {
                family: family.as_str(),
            })
            .observe(seconds);
    }

    pub fn fell_back(&self, family: ContractFamily) {
        self.fallbacks
            .get_or_create(&FamilyLabels {
                family: family.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_their_names() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let ca = ContractFamily::CodeAnalysis;
        m.count(ca, "code_analysis", "success");
        m.count(ca, "code_analysis", "timeout");
        m.observe_latency(ca, 0.004);
        m.fell_back(ContractFamily::Codegen);
        m.mismatched_dropped.inc();
        m.set_circuit(ContractFamily::Codegen, State::Open);
        m.broker_up.set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "omninode_intelligence_requests_total{family=\"code_analysis\",operation=\"code_analysis\",outcome=\"success\"} 1",
            "omninode_intelligence_requests_total{family=\"code_analysis\",operation=\"code_analysis\",outcome=\"timeout\"} 1",
            "omninode_intelligence_request_latency_seconds_bucket{le=\"0.005\",family=\"code_analysis\"} 1",
            "omninode_intelligence_fallbacks_total{family=\"codegen\"} 1",
            "omninode_intelligence_fallbacks_total{family=\"code_analysis\"} 0",
            "omninode_intelligence_replies_dropped_total 1",
            "omninode_intelligence_circuit_state{family=\"codegen\"} 2",
            "omninode_intelligence_circuit_state{family=\"code_analysis\"} 0",
            "omninode_intelligence_broker_up 1",
        ] {
            assert!(text.contains(needle), "{needle} not in:\n{text}");
        }
    }
}
