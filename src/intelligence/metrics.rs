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
    pub latency_seconds: Histogram,
    pub mismatched_dropped: Counter,
    pub dead_lettered: Counter,
    pub circuit_state: Family<FamilyLabels, Gauge>,
    /// 1 while the broker is reachable and the reply consumer assigned.
    pub broker_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let buckets = [
            0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        Metrics {
            requests: Family::default(),
            latency_seconds: Histogram::new(buckets),
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
            "Intelligence requests by operation and outcome",
            self.requests.clone(),
        );
        r.register(
            "request_latency_seconds",
            "Round trip of answered requests",
            self.latency_seconds.clone(),
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
        // Both families show from the start, closed.
        for family in ContractFamily::ALL {
            self.set_circuit(family, State::Closed);
        }
    }

    pub fn set_circuit(&self, family: ContractFamily, state: State) {
        self.circuit_state
            .get_or_create(&FamilyLabels {
                family: family.as_str(),
            })
            .set(state.gauge());
    }

    pub fn count(&self, operation: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                operation: operation.to_string(),
                outcome: outcome.to_string(),
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
        m.count("code_analysis", "success");
        m.count("code_analysis", "timeout");
        m.latency_seconds.observe(0.004);
        m.mismatched_dropped.inc();
        m.set_circuit(ContractFamily::Codegen, State::Open);
        m.broker_up.set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "omninode_intelligence_requests_total{operation=\"code_analysis\",outcome=\"success\"} 1",
            "omninode_intelligence_requests_total{operation=\"code_analysis\",outcome=\"timeout\"} 1",
            "omninode_intelligence_request_latency_seconds_bucket{le=\"0.005\"} 1",
            "omninode_intelligence_replies_dropped_total 1",
            "omninode_intelligence_circuit_state{family=\"codegen\"} 2",
            "omninode_intelligence_circuit_state{family=\"code_analysis\"} 0",
            "omninode_intelligence_broker_up 1",
        ] {
            assert!(text.contains(needle), "{needle} not in:\n{text}");
        }
    }
}
