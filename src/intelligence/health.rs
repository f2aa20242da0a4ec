//! Whether the Kafka broker can be reached, so that a generation never waits on a broker that
//! is gone: librdkafka reports "all brokers down" through the client context of each of our
//! clients, and the reply consumer's set-up (metadata and watermarks of the reply topics) is
//! what says it is back.

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::watch;

/// What the client knows about the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reach {
    /// Not known yet: the client was just created and has not finished its set-up.
    #[default]
    Connecting,
    /// The reply consumer is assigned: requests can be sent and answered.
    Up,
    /// librdkafka lost every broker, or the set-up failed to reach one: requests fail at once.
    Down,
}

/// The shared reachability, written by the client contexts and the consumer task, and shown
/// as a gauge (1 while Up).
#[derive(Clone, Default)]
pub struct Health {
    tx: std::sync::Arc<watch::Sender<Reach>>,
    gauge: Gauge,
}

impl Health {
    pub fn new(gauge: Gauge) -> Self {
        gauge.set(0);
        Health {
            tx: Default::default(),
            gauge,
        }
    }

    pub fn get(&self) -> Reach {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Reach> {
        self.tx.subscribe()
    }

    /// Set the state; watchers are woken only when it changes.
    pub fn set(&self, reach: Reach) {
        self.tx.send_if_modified(|current| {
            let changed = *current != reach;
            if changed {
                tracing::info!(from = ?*current, to = ?reach, "Kafka broker reachability changed");
                *current = reach;
                self.gauge.set(i64::from(reach == Reach::Up));
            }
            changed
        });
    }

    /// Resolves once the broker is Up (true) or Down (false), or after `timeout` (false).
    pub async fn settled(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|r| *r != Reach::Connecting)).await;
        match waited {
            Ok(Ok(reach)) => *reach == Reach::Up,
            _ => false,
        }
    }

    /// Resolves when the broker is Down (never, while it stays reachable).
    pub async fn down(&self) {
        let mut rx = self.subscribe();
        let _ = rx.wait_for(|r| *r == Reach::Down).await;
    }
}

/// Whether an error means no broker can be reached (rather than a refused request).
pub fn is_unreachable(error: &KafkaError) -> bool {
    let code = match error {
        KafkaError::Global(c)
        | KafkaError::MessageConsumption(c)
        | KafkaError::MetadataFetch(c)
        | KafkaError::AdminOp(c)
        | KafkaError::MessageProduction(c) => *c,
        _ => return false,
    };
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::MessageTimedOut
    )
}

/// The client context of the producer, consumer and admin client: it turns librdkafka's
/// "all brokers down" into `Reach::Down` instead of an error line per client and reconnect.
#[derive(Clone, Default)]
pub struct HealthContext {
    pub health: Health,
    /// Whether this client's errors arrive as they happen. The producer's are read by its own
    /// polling thread; the consumer's wait in its queue until it is next read, so after an
    /// outage it still reports the "all brokers down" of every failed reconnect, and the
    /// consumer task checks those against the broker instead.
    fresh: bool,
}

impl HealthContext {
    /// For a client whose errors are read as they happen (the producer).
    pub fn fresh(health: &Health) -> Self {
        HealthContext {
            health: health.clone(),
            fresh: true,
        }
    }

    /// For a client whose errors wait in a queue (the consumer, the admin client).
    pub fn queued(health: &Health) -> Self {
        HealthContext {
            health: health.clone(),
            fresh: false,
        }
    }
}

impl ClientContext for HealthContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            tracing::debug!(reason, fresh = self.fresh, "librdkafka: all brokers down");
            if self.fresh {
                self.health.set(Reach::Down);
            }
        } else {
            tracing::warn!(error = %error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for HealthContext {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn settled_tells_up_from_down_and_down_wakes_waiters() {
        let h = Health::default();
        assert_eq!(h.get(), Reach::Connecting);
        assert!(!h.settled(Duration::from_millis(10)).await, "times out");
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { h.down().await }
        });
        h.set(Reach::Up);
        assert!(h.settled(Duration::from_millis(10)).await);
        h.set(Reach::Down);
        assert!(!h.settled(Duration::from_millis(10)).await);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter wakes on Down")
            .unwrap();
    }

    #[test]
    fn all_brokers_down_sets_down() {
        let health = Health::default();
        let down = || KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        HealthContext::queued(&health).error(down(), "1/1 brokers are down");
        assert_eq!(
            health.get(),
            Reach::Connecting,
            "a queued report may be stale"
        );
        HealthContext::fresh(&health).error(down(), "1/1 brokers are down");
        assert_eq!(health.get(), Reach::Down);
        assert!(is_unreachable(&KafkaError::MetadataFetch(
            RDKafkaErrorCode::OperationTimedOut
        )));
        assert!(!is_unreachable(&KafkaError::AdminOp(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
    }
}
