//! The Kafka request/response client: one idempotent producer and one long-lived consumer per
//! process, a pending-request map keyed by correlation id, per-operation timeouts, retries with
//! exponential backoff, a circuit breaker per contract family, broker reachability, and a
//! dead-letter topic for undecodable replies.
//!
//! The two contract families (code analysis and codegen, CONTRACTS.md §1) are independent: the
//! live service serves only code analysis, so an unanswered codegen family must never cost
//! code analysis anything. A broker that cannot be reached costs nothing either: requests fail
//! at once while it is down, and in-flight ones are released when it goes.
//!
//! Replies are consumed by manual assignment of every partition of the reply topics, starting
//! at the high watermark read before the client reports ready: no consumer-group rebalance to
//! wait for, and no other operator instance's replies are ever taken from us (each instance
//! reads every reply and keeps only those it is waiting for).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::breaker::{Breaker, Failure, Permit};
use super::config::IntelligenceConfig;
use super::health::{Health, HealthContext, Reach, is_unreachable};
use super::metrics::Metrics;
use super::wire::{
    CodeAnalysisCompleted, CodeAnalysisFailed, CodeAnalysisOperation, CodeAnalysisRequest,
    CodegenOperation, CodegenResponse, DeadLetter, SessionStatus, StatusEvent, codegen_request,
    decode_reply,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IntelligenceError {
    #[error("the circuit breaker is open: the service is presumed not to serve this family")]
    CircuitOpen,
    #[error("the Kafka broker is unreachable")]
    BrokerUnavailable,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("could not send the request: {0}")]
    Send(String),
    #[error("the intelligence service failed the request: {code}: {message}")]
    Failed {
        code: String,
        message: String,
        retryable: bool,
    },
}

impl IntelligenceError {
    /// Metric outcome label.
    pub fn outcome(&self) -> &'static str {
        match self {
            IntelligenceError::CircuitOpen => "circuit_open",
            IntelligenceError::BrokerUnavailable => "broker_unavailable",
            IntelligenceError::Timeout(_) => "timeout",
            IntelligenceError::Send(_) | IntelligenceError::Failed { .. } => "error",
        }
    }
}

/// The two contract families of CONTRACTS.md §1, each with its own breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContractFamily {
    /// `onex.cmd.omniintelligence.code-analysis.v1`: what the live service serves.
    CodeAnalysis,
    /// `omninode.codegen.request.*`: optional, served by the stand-in responder's `all` mode.
    Codegen,
}

impl ContractFamily {
    pub const ALL: [ContractFamily; 2] = [ContractFamily::CodeAnalysis, ContractFamily::Codegen];

    pub fn as_str(self) -> &'static str {
        match self {
            ContractFamily::CodeAnalysis => "code_analysis",
            ContractFamily::Codegen => "codegen",
        }
    }
}

/// A reply matched to its request.
#[derive(Debug, Clone)]
struct Reply {
    topic: String,
    body: Value,
}

struct Inner {
    config: IntelligenceConfig,
    /// Replaced when the broker stops accepting its writes for good (see `heal_producer`).
    producer: std::sync::RwLock<Arc<FutureProducer<HealthContext>>>,
    last_heal: Mutex<Option<Instant>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    /// One breaker per family, indexed like `ContractFamily::ALL`.
    breakers: [Mutex<Breaker>; 2],
    health: Health,
    metrics: Metrics,
    consumer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut task) = self.consumer_task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

fn make_producer(
    config: &IntelligenceConfig,
    servers: &str,
    health: &Health,
) -> Result<FutureProducer<HealthContext>, KafkaError> {
    let mut pc = client_config(config, servers);
    pc.set("enable.idempotence", "true");
    // 1 ms lets concurrent requests share a produce request: p95 at concurrency 100 went from
    // 24 to 12 ms (docs/benchmarks.md), at ~1 ms more for a lone request.
    pc.set("linger.ms", "1");
    pc.set(
        "message.timeout.ms",
        config
            .intelligence_code_analysis_timeout_ms
            .max(1000)
            .to_string(),
    );
    pc.create_with_context(HealthContext::fresh(health))
}

impl Inner {
    fn producer(&self) -> Arc<FutureProducer<HealthContext>> {
        match self.producer.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replace the producer after a failed write. An idempotent producer's session (producer
    /// id, epoch, sequence numbers) can become unacceptable to a broker that restarted or failed
    /// over, or stuck after messages timed out in flight, and librdkafka then fails every later
    /// write; a fresh producer starts a new session. At most once every two seconds, so an
    /// absent broker is not answered with a stream of new sessions.
    fn heal_producer(&self) {
        let Ok(mut last) = self.last_heal.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
            return;
        }
        *last = Some(Instant::now());
        let servers = self
            .config
            .kafka_bootstrap_servers
            .clone()
            .unwrap_or_default();
        match make_producer(&self.config, &servers, &self.health) {
            Ok(fresh) => {
                if let Ok(mut slot) = self.producer.write() {
                    *slot = Arc::new(fresh);
                }
                tracing::info!("intelligence producer replaced after a refused write");
            }
            Err(e) => tracing::warn!(error = %e, "could not replace the intelligence producer"),
        }
    }
}

/// Handle to the client; cheap to clone.
#[derive(Clone)]
pub struct IntelligenceClient {
    inner: Arc<Inner>,
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn client_config(config: &IntelligenceConfig, servers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers);
    c.set("client.id", "omninode-operator");
    // Small request/reply messages: Nagle's algorithm would hold them back waiting for ACKs.
    c.set("socket.nagle.disable", "true");
    // Fail fast when the broker is gone instead of hanging on reconnects.
    c.set("socket.connection.setup.timeout.ms", "3000");
    c.set("reconnect.backoff.max.ms", "1000");
    for (k, v) in config.properties() {
        c.set(k, v);
    }
    c
}

impl IntelligenceClient {
    /// Create the client. It does not need the broker to be up: the consumer set-up (topics,
    /// partition assignment) runs in the background and retries until the broker answers;
    /// requests wait for it within their own timeout.
    pub fn connect(config: IntelligenceConfig, metrics: Metrics) -> Result<Self, KafkaError> {
        let servers = config.kafka_bootstrap_servers.clone().unwrap_or_default();
        let health = Health::new(metrics.broker_up.clone());
        let producer = make_producer(&config, &servers, &health)?;

        let mut cc = client_config(&config, &servers);
        cc.set(
            "group.id",
            format!("omninode-operator-{}", uuid::Uuid::new_v4()),
        );
        cc.set("enable.auto.commit", "false");
        cc.set("enable.auto.offset.store", "false");
        // librdkafka's default (500 ms) would hold every reply in the broker; 1 ms halved the
        // round trip through tansu against 5 ms (see docs/benchmarks.md).
        cc.set("fetch.wait.max.ms", "1");
        cc.set("fetch.error.backoff.ms", "50");
        let consumer: StreamConsumer<HealthContext> =
            cc.create_with_context(HealthContext::queued(&health))?;
        let admin: AdminClient<HealthContext> =
            client_config(&config, &servers).create_with_context(HealthContext::queued(&health))?;

        let breaker = || {
            Mutex::new(Breaker::new(
                config.intelligence_breaker_threshold,
                Duration::from_millis(config.intelligence_breaker_recovery_ms),
            ))
        };
        let breakers = [breaker(), breaker()];
        let inner = Arc::new(Inner {
            breakers,
            config,
            producer: std::sync::RwLock::new(Arc::new(producer)),
            last_heal: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            health,
            metrics,
            consumer_task: Mutex::new(None),
        });
        let task = tokio::spawn(consume(Arc::downgrade(&inner), Arc::new(consumer), admin));
        if let Ok(mut slot) = inner.consumer_task.lock() {
            *slot = Some(task);
        }
        Ok(IntelligenceClient { inner })
    }

    pub fn config(&self) -> &IntelligenceConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether the reply consumer is assigned and requests can be answered.
    pub fn is_ready(&self) -> bool {
        self.inner.health.get() == Reach::Up
    }

    /// Whether the broker is known to be unreachable (requests then fail at once).
    pub fn broker_down(&self) -> bool {
        self.inner.health.get() == Reach::Down
    }

    /// Wait until ready, at most `timeout` (through outages: a Down broker may come back).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.health.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r == Reach::Up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Circuit state of a family, for metrics and tests.
    pub fn circuit_state(&self, family: ContractFamily) -> super::breaker::State {
        self.inner.breakers[family as usize]
            .lock()
            .map(|b| b.state(Instant::now()))
            .unwrap_or(super::breaker::State::Closed)
    }

    /// Wait, at most `timeout`, for the status events already handed to the producer to be
    /// delivered (nothing to wait for while the broker is down).
    pub async fn flush(&self, timeout: Duration) {
        if self.broker_down() {
            return;
        }
        let producer = self.inner.producer();
        let _ = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer.flush(Timeout::After(timeout))
        })
        .await;
    }

    /// Requests waiting for a reply (for tests and memory accounting).
    pub fn pending(&self) -> usize {
        self.inner.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Code analysis on the live contract.
    pub async fn code_analysis(
        &self,
        source_path: &str,
        content: &str,
        operation: CodeAnalysisOperation,
    ) -> Result<CodeAnalysisCompleted, IntelligenceError> {
        let topic = self.inner.config.code_analysis_request();
        let failed_topic = self.inner.config.code_analysis_failed();
        let timeout = self.inner.config.code_analysis_timeout();
        self.with_retries("code_analysis", || async {
            let reply = self
                .exchange(
                    "code_analysis",
                    ContractFamily::CodeAnalysis,
                    &topic,
                    timeout,
                    |cid| {
                        let req = CodeAnalysisRequest {
                            correlation_id: cid.to_string(),
                            source_path: source_path.to_string(),
                            content: content.to_string(),
                            operation_type: operation,
                            language: "python".into(),
                            options: Map::new(),
                            project_id: Some("omninode-operator".into()),
                            user_id: None,
                        };
                        serde_json::to_vec(&req).unwrap_or_default()
                    },
                )
                .await?;
            if reply.topic == failed_topic {
                let f: CodeAnalysisFailed = serde_json::from_value(reply.body).unwrap_or_default();
                return Err(IntelligenceError::Failed {
                    code: f.error_code.clone().unwrap_or_else(|| "UNKNOWN".into()),
                    message: f.error_message.clone().unwrap_or_default(),
                    retryable: f.retryable(),
                });
            }
            Ok(serde_json::from_value(reply.body).unwrap_or_default())
        })
        .await
    }

    /// A codegen request (`fields` are the operation's payload fields).
    pub async fn codegen(
        &self,
        op: CodegenOperation,
        session_id: &str,
        fields: Map<String, Value>,
    ) -> Result<CodegenResponse, IntelligenceError> {
        let timeout = match op {
            CodegenOperation::Validate => self.inner.config.code_analysis_timeout(),
            _ => self.inner.config.timeout(),
        };
        self.codegen_within(op, session_id, fields, timeout).await
    }

    /// A codegen request with an explicit timeout (a NodeGeneration's `intelligence.timeoutSeconds`).
    pub async fn codegen_within(
        &self,
        op: CodegenOperation,
        session_id: &str,
        fields: Map<String, Value>,
        timeout: Duration,
    ) -> Result<CodegenResponse, IntelligenceError> {
        let topic = self.inner.config.codegen_request(op);
        let label = format!("codegen_{}", op.as_str());
        self.with_retries(&label, || async {
            let reply = self
                .exchange(&label, ContractFamily::Codegen, &topic, timeout, |cid| {
                    let event =
                        codegen_request(op, cid, session_id, &now_rfc3339(), fields.clone());
                    serde_json::to_vec(&event).unwrap_or_default()
                })
                .await?;
            let response: CodegenResponse = serde_json::from_value(reply.body).unwrap_or_default();
            match response.error_code() {
                Some(code) => Err(IntelligenceError::Failed {
                    message: response
                        .details
                        .as_ref()
                        .and_then(|d| d.get("error_message").or_else(|| d.get("message")))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    retryable: false,
                    code,
                }),
                None => Ok(response),
            }
        })
        .await
    }

    /// Publish a session status event. Best effort, and never waited for: the event is handed to
    /// the producer (which keeps the order of one session's events) and nothing is sent while
    /// the broker is down.
    pub fn publish_status(
        &self,
        session_id: &str,
        status: SessionStatus,
        progress: f64,
        message: &str,
    ) {
        let event = StatusEvent {
            session_id: session_id.to_string(),
            status,
            progress_percentage: progress,
            message: message.to_string(),
            metadata: Map::new(),
        };
        if self.broker_down() {
            return;
        }
        let topic = self.inner.config.codegen_status();
        let Ok(bytes) = serde_json::to_vec(&event) else {
            return;
        };
        let parent = crate::trace::current_traceparent();
        let record = with_trace(
            FutureRecord::to(&topic).key(session_id).payload(&bytes),
            parent.as_deref(),
        );
        if let Err((e, _)) = self.inner.producer().send_result(record) {
            tracing::debug!(error = %e, topic, "could not publish a codegen status event");
        }
    }

    async fn with_retries<T, F, Fut>(
        &self,
        label: &str,
        mut attempt: F,
    ) -> Result<T, IntelligenceError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, IntelligenceError>>,
    {
        let mut tries = 0;
        loop {
            match attempt().await {
                Err(IntelligenceError::Failed {
                    retryable: true, ..
                }) if tries < self.inner.config.intelligence_max_retries => {
                    let backoff = self
                        .inner
                        .config
                        .intelligence_retry_backoff_ms
                        .saturating_mul(1 << tries.min(10));
                    tries += 1;
                    tracing::debug!(
                        label,
                        tries,
                        backoff_ms = backoff,
                        "retrying a failed request the service allows to retry"
                    );
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                other => return other,
            }
        }
    }

    /// One request/reply exchange under the family's breaker, with a fresh correlation id.
    /// A half-open breaker's probe runs in the background: the caller falls back at once, and
    /// the probe's answer closes the circuit for the requests after it.
    async fn exchange(
        &self,
        label: &str,
        family: ContractFamily,
        topic: &str,
        timeout: Duration,
        value: impl Fn(&str) -> Vec<u8>,
    ) -> Result<Reply, IntelligenceError> {
        let inner = &self.inner;
        if inner.health.get() == Reach::Down {
            inner.metrics.count(family, label, "broker_unavailable");
            return Err(IntelligenceError::BrokerUnavailable);
        }
        let Some(permit) = inner.acquire(family) else {
            inner.metrics.count(family, label, "circuit_open");
            return Err(IntelligenceError::CircuitOpen);
        };
        let cid = uuid::Uuid::new_v4().to_string();
        let bytes = value(&cid);
        // Taken here: a probe runs in a task of its own, outside the generation's scope.
        let parent = crate::trace::current_traceparent();
        if permit.probe {
            let probe = self.inner.clone();
            let (probe_label, probe_topic) = (label.to_string(), topic.to_string());
            tokio::spawn(async move {
                let mut guard = PermitGuard::new(&probe, family, permit);
                let result = send_and_wait(&probe, &probe_topic, timeout, cid, bytes, parent).await;
                tracing::debug!(
                    family = family.as_str(),
                    ok = result.is_ok(),
                    "half-open probe"
                );
                guard.settle(&probe_label, &result);
            });
            inner.metrics.count(family, label, "circuit_open");
            return Err(IntelligenceError::CircuitOpen);
        }
        // If the caller drops this future mid-flight, the guard still releases the permit, so
        // a half-open probe can never stay in flight forever.
        let mut guard = PermitGuard::new(inner, family, permit);
        let result = send_and_wait(inner, topic, timeout, cid, bytes, parent).await;
        guard.settle(label, &result);
        result
    }
}

impl Inner {
    fn acquire(&self, family: ContractFamily) -> Option<Permit> {
        let mut breaker = self.breakers[family as usize].lock().ok()?;
        let now = Instant::now();
        let permit = breaker.try_acquire(now);
        self.metrics.set_circuit(family, breaker.state(now));
        permit
    }
}

/// Send one request and wait for its reply, at most `timeout`; at once `BrokerUnavailable` when
/// the broker is (or goes) down meanwhile.
/// The W3C `traceparent` header on a record, when it belongs to a trace.
fn with_trace<'a, K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
    record: FutureRecord<'a, K, P>,
    traceparent: Option<&str>,
) -> FutureRecord<'a, K, P> {
    match traceparent {
        Some(value) => record.headers(OwnedHeaders::new().insert(Header {
            key: crate::trace::TRACEPARENT,
            value: Some(value),
        })),
        None => record,
    }
}

async fn send_and_wait(
    inner: &Inner,
    topic: &str,
    timeout: Duration,
    cid: String,
    bytes: Vec<u8>,
    traceparent: Option<String>,
) -> Result<Reply, IntelligenceError> {
    let deadline = tokio::time::Instant::now() + timeout;
    if inner.health.get() == Reach::Connecting && !inner.health.settled(timeout).await {
        return Err(match inner.health.get() {
            Reach::Down => IntelligenceError::BrokerUnavailable,
            _ => IntelligenceError::Timeout(timeout),
        });
    }
    let exchange = async {
        let (tx, rx) = oneshot::channel();
        // Forgets the request however this ends: reply, timeout, error or cancellation.
        let _pending = PendingGuard::insert(inner, &cid, tx);
        let mut backoff = Duration::from_millis(inner.config.intelligence_retry_backoff_ms.max(1));
        let mut sends = 0;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let record = with_trace(
                FutureRecord::to(topic).key(&cid).payload(&bytes),
                traceparent.as_deref(),
            );
            match inner
                .producer()
                .send(record, Timeout::After(remaining))
                .await
            {
                Ok(_) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if sends < inner.config.intelligence_max_retries && remaining > backoff =>
                {
                    sends += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err((e, _)) => {
                    inner.heal_producer();
                    return Err(IntelligenceError::Send(e.to_string()));
                }
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(IntelligenceError::Timeout(timeout)),
        }
    };
    tokio::select! {
        result = exchange => result,
        () = inner.health.down() => Err(IntelligenceError::BrokerUnavailable),
    }
}

/// A pending request's entry, removed when the exchange ends however it ends.
struct PendingGuard<'a> {
    inner: &'a Inner,
    cid: &'a str,
}

impl<'a> PendingGuard<'a> {
    fn insert(inner: &'a Inner, cid: &'a str, tx: oneshot::Sender<Reply>) -> Self {
        if let Ok(mut pending) = inner.pending.lock() {
            pending.insert(cid.to_string(), tx);
        }
        PendingGuard { inner, cid }
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.remove(self.cid);
        }
    }
}

/// Settles a breaker permit exactly once: by the exchange's result, or released (saying
/// nothing about the service) when dropped unsettled.
struct PermitGuard<'a> {
    inner: &'a Inner,
    family: ContractFamily,
    permit: Option<Permit>,
    started: Instant,
}

impl<'a> PermitGuard<'a> {
    fn new(inner: &'a Inner, family: ContractFamily, permit: Permit) -> Self {
        PermitGuard {
            inner,
            family,
            permit: Some(permit),
            started: Instant::now(),
        }
    }

    /// Count the outcome and tell the breaker what it says about the service.
    fn settle(&mut self, label: &str, result: &Result<Reply, IntelligenceError>) {
        let metrics = &self.inner.metrics;
        metrics.count(
            self.family,
            label,
            match result {
                Ok(_) => "success",
                Err(e) => e.outcome(),
            },
        );
        if result.is_ok() {
            metrics.observe_latency(self.family, self.started.elapsed().as_secs_f64());
        }
        let verdict = match result {
            Ok(_) => None,
            Err(IntelligenceError::Timeout(_)) => Some(Failure::Timeout),
            Err(IntelligenceError::BrokerUnavailable | IntelligenceError::CircuitOpen) => {
                self.release();
                return;
            }
            Err(_) => Some(Failure::Error),
        };
        let Some(permit) = self.permit.take() else {
            return;
        };
        if let Ok(mut breaker) = self.inner.breakers[self.family as usize].lock() {
            match verdict {
                None => breaker.on_success(permit),
                Some(failure) => breaker.on_failure(permit, failure, Instant::now()),
            }
            metrics.set_circuit(self.family, breaker.state(Instant::now()));
        }
    }

    fn release(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        if let Ok(mut breaker) = self.inner.breakers[self.family as usize].lock() {
            breaker.release(permit);
        }
    }
}

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Set up the reply consumer (topics, assignment at the current end), then route every reply
/// to its pending request, dropping the unknown and dead-lettering the undecodable.
async fn consume(
    inner: std::sync::Weak<Inner>,
    consumer: Arc<StreamConsumer<HealthContext>>,
    admin: AdminClient<HealthContext>,
) {
    let Some(health) = inner.upgrade().map(|i| i.health.clone()) else {
        return;
    };
    'setup: loop {
        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let config = strong.config.clone();
            drop(strong);
            // While the broker is down, a one-second metadata request tells when it is back;
            // the set-up's own requests would each wait out their five-second timeouts.
            if health.get() == Reach::Down && !answers_metadata(&consumer).await {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            match assign(&config, &consumer, &admin).await {
                Ok(()) => break,
                Err(e) => {
                    if is_unreachable(&e) {
                        health.set(Reach::Down);
                    }
                    tracing::debug!(error = %e, "intelligence consumer not set up yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        health.set(Reach::Up);
        loop {
            let message = tokio::select! {
                m = consumer.recv() => m,
                // Another of our clients lost the broker: set up again once it is back.
                () = health.down() => continue 'setup,
            };
            let Some(inner) = inner.upgrade() else { return };
            match message {
                Ok(m) => route(&inner, m.topic(), m.offset(), m.key(), m.payload()).await,
                // A broker that lost its topics (restarted without storage): set up again.
                Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                )) => {
                    tracing::info!(
                        "reply topics disappeared; setting the intelligence consumer up again"
                    );
                    health.set(Reach::Connecting);
                    continue 'setup;
                }
                // The consumer queues librdkafka's errors until they are read: after an outage
                // it still holds the "all brokers down" of every failed reconnect. Only one the
                // broker does not contradict right now means it is gone.
                Err(e) if is_unreachable(&e) => {
                    if answers_metadata(&consumer).await {
                        tracing::debug!(error = %e, "stale consumer error; the broker answers");
                        continue;
                    }
                    health.set(Reach::Down);
                    continue 'setup;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "intelligence consumer error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Whether the broker answers a metadata request within a second.
async fn answers_metadata(consumer: &Arc<StreamConsumer<HealthContext>>) -> bool {
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, Duration::from_secs(1))
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

async fn assign(
    config: &IntelligenceConfig,
    consumer: &Arc<StreamConsumer<HealthContext>>,
    admin: &AdminClient<HealthContext>,
) -> Result<(), KafkaError> {
    if config.kafka_ensure_topics {
        let names = config.all_topics();
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(5)))
            .request_timeout(Some(Duration::from_secs(5)));
        for result in admin.create_topics(&topics, &opts).await? {
            if let Err((topic, code)) = result
                && code != RDKafkaErrorCode::TopicAlreadyExists
            {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::debug!(topic, "topic creation failed"));
            }
        }
    }
    let consumer = consumer.clone();
    let topics = config.reply_topics();
    tokio::task::spawn_blocking(move || {
        let mut list = TopicPartitionList::new();
        for topic in &topics {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(3))?;
            let partitions = metadata
                .topics()
                .first()
                .map(|t| t.partitions().len())
                .unwrap_or(0);
            if partitions == 0 {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
            for p in 0..partitions as i32 {
                let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(3))?;
                list.add_partition_offset(topic, p, Offset::Offset(high))?;
            }
        }
        consumer.assign(&list)
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

async fn route(
    inner: &Arc<Inner>,
    topic: &str,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) {
    let key = key.map(|k| String::from_utf8_lossy(k).into_owned());
    let decoded = decode_reply(payload);
    let (reply, error) = match decoded {
        Ok(d) if d.body_correlation_id.is_some() || key.is_some() => (Some(d), None),
        Ok(_) => (
            None,
            Some((
                "MissingCorrelationId",
                "reply has neither a correlation id nor a key".to_string(),
            )),
        ),
        Err(e) => (None, Some((e.kind(), e.to_string()))),
    };
    let Some(reply) = reply else {
        let (error_type, error) = error.unwrap_or(("Unknown", String::new()));
        dead_letter(inner, topic, offset, payload, error_type, &error).await;
        return;
    };
    let waiting = inner.pending.lock().ok().and_then(|mut pending| {
        reply
            .body_correlation_id
            .as_ref()
            .and_then(|cid| pending.remove(cid))
            .or_else(|| key.as_ref().and_then(|k| pending.remove(k)))
    });
    match waiting {
        Some(tx) => {
            // The request may have timed out between the lookup and now: then the reply is as
            // late as one that found nobody waiting, and counts the same.
            if tx
                .send(Reply {
                    topic: topic.to_string(),
                    body: reply.body,
                })
                .is_err()
            {
                inner.metrics.mismatched_dropped.inc();
            }
        }
        None => {
            inner.metrics.mismatched_dropped.inc();
            tracing::debug!(topic, offset, correlation_id = ?reply.body_correlation_id, ?key, "dropping a reply nobody is waiting for");
        }
    }
}

/// Send a dead letter without holding up the routing of other replies; retried, because a
/// dead letter is the only trace of what the service sent.
async fn dead_letter(
    inner: &Arc<Inner>,
    topic: &str,
    offset: i64,
    payload: Option<&[u8]>,
    error_type: &str,
    error: &str,
) {
    inner.metrics.dead_lettered.inc();
    let letter = DeadLetter {
        original_topic: topic.to_string(),
        original_offset: offset,
        original_value: payload
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        error: error.to_string(),
        error_type: error_type.to_string(),
    };
    let dlq = inner.config.dlq(topic);
    let bytes = serde_json::to_vec(&letter).unwrap_or_else(|_| json!({}).to_string().into_bytes());
    let key = format!("{topic}:{offset}");
    let inner = Arc::downgrade(inner);
    tokio::spawn(async move {
        for attempt in 0..4u32 {
            let Some(producer) = inner.upgrade().map(|i| i.producer()) else {
                return;
            };
            let record = FutureRecord::to(&dlq).key(&key).payload(&bytes);
            match producer
                .send(record, Timeout::After(Duration::from_secs(10)))
                .await
            {
                Ok(_) => return,
                Err((e, _)) => {
                    tracing::warn!(error = %e, dlq, attempt, "could not dead-letter an undecodable reply");
                    if let Some(i) = inner.upgrade() {
                        i.heal_producer();
                    }
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
    });
}
