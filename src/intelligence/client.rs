//! The Kafka request/response client: one idempotent producer and one long-lived consumer per
//! process, a pending-request map keyed by correlation id, per-operation timeouts, retries with
//! exponential backoff, a circuit breaker, and a dead-letter topic for undecodable replies.
//!
//! Replies are consumed by manual assignment of every partition of the reply topics, starting
//! at the high watermark read before the client reports ready: no consumer-group rebalance to
//! wait for, and no other operator instance's replies are ever taken from us (each instance
//! reads every reply and keeps only those it is waiting for).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value, json};
use tokio::sync::{oneshot, watch};

use super::breaker::{Breaker, Permit};
use super::config::IntelligenceConfig;
use super::metrics::Metrics;
use super::wire::{
    CodeAnalysisCompleted, CodeAnalysisFailed, CodeAnalysisOperation, CodeAnalysisRequest,
    CodegenOperation, CodegenResponse, DeadLetter, SessionStatus, StatusEvent, codegen_request,
    decode_reply,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IntelligenceError {
    #[error("the circuit breaker is open: the intelligence service is presumed absent")]
    CircuitOpen,
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
            IntelligenceError::Timeout(_) => "timeout",
            IntelligenceError::Send(_) | IntelligenceError::Failed { .. } => "error",
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
    producer: std::sync::RwLock<Arc<FutureProducer>>,
    last_heal: Mutex<Option<Instant>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    breaker: Mutex<Breaker>,
    ready: watch::Receiver<bool>,
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

fn make_producer(config: &IntelligenceConfig, servers: &str) -> Result<FutureProducer, KafkaError> {
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
    pc.create()
}

impl Inner {
    fn producer(&self) -> Arc<FutureProducer> {
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
        match make_producer(&self.config, &servers) {
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
        let producer = make_producer(&config, &servers)?;

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
        let consumer: StreamConsumer = cc.create()?;
        let admin: AdminClient<DefaultClientContext> = client_config(&config, &servers).create()?;

        let (ready_tx, ready_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            breaker: Mutex::new(Breaker::new(
                config.intelligence_breaker_threshold,
                Duration::from_millis(config.intelligence_breaker_recovery_ms),
            )),
            config,
            producer: std::sync::RwLock::new(Arc::new(producer)),
            last_heal: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            ready: ready_rx,
            metrics,
            consumer_task: Mutex::new(None),
        });
        let task = tokio::spawn(consume(
            Arc::downgrade(&inner),
            Arc::new(consumer),
            admin,
            ready_tx,
        ));
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
        *self.inner.ready.borrow()
    }

    /// Wait until ready, at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.ready.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Circuit state for metrics and tests.
    pub fn circuit_state(&self) -> super::breaker::State {
        self.inner
            .breaker
            .lock()
            .map(|b| b.state(Instant::now()))
            .unwrap_or(super::breaker::State::Closed)
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
                .exchange("code_analysis", &topic, timeout, |cid| {
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
                })
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
                .exchange(&label, &topic, timeout, |cid| {
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

    /// Publish a session status event (best effort: failures are logged, never raised).
    pub async fn publish_status(
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
        let topic = self.inner.config.codegen_status();
        let Ok(bytes) = serde_json::to_vec(&event) else {
            return;
        };
        let record = FutureRecord::to(&topic).key(session_id).payload(&bytes);
        if let Err((e, _)) = self
            .inner
            .producer()
            .send(record, Timeout::After(Duration::from_secs(2)))
            .await
        {
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

    /// One request/reply exchange under the breaker, with a fresh correlation id.
    async fn exchange(
        &self,
        label: &str,
        topic: &str,
        timeout: Duration,
        value: impl Fn(&str) -> Vec<u8>,
    ) -> Result<Reply, IntelligenceError> {
        let inner = &self.inner;
        let permit = {
            let Ok(mut breaker) = inner.breaker.lock() else {
                return Err(IntelligenceError::CircuitOpen);
            };
            let permit = breaker.try_acquire(Instant::now());
            inner
                .metrics
                .circuit_state
                .set(breaker.state(Instant::now()).gauge());
            permit
        };
        let Some(permit) = permit else {
            inner.metrics.count(label, "circuit_open");
            return Err(IntelligenceError::CircuitOpen);
        };
        let started = Instant::now();
        // If the caller drops this future mid-flight, the guard still settles the permit (as a
        // failure), so a half-open probe can never stay in flight forever.
        let mut guard = PermitGuard {
            inner,
            permit: Some(permit),
        };
        let result = self.send_and_wait(topic, timeout, value).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.outcome(),
        };
        inner.metrics.count(label, outcome);
        if result.is_ok() {
            inner
                .metrics
                .latency_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        guard.settle(result.is_ok());
        result
    }

    async fn send_and_wait(
        &self,
        topic: &str,
        timeout: Duration,
        value: impl Fn(&str) -> Vec<u8>,
    ) -> Result<Reply, IntelligenceError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + timeout;
        if !self.wait_ready(timeout).await {
            return Err(IntelligenceError::Timeout(timeout));
        }
        let cid = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = inner.pending.lock() {
            pending.insert(cid.clone(), tx);
        }
        let forget = || {
            if let Ok(mut pending) = inner.pending.lock() {
                pending.remove(&cid);
            }
        };
        let bytes = value(&cid);
        let mut backoff = Duration::from_millis(inner.config.intelligence_retry_backoff_ms.max(1));
        let mut sends = 0;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let record = FutureRecord::to(topic).key(&cid).payload(&bytes);
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
                    forget();
                    inner.heal_producer();
                    return Err(IntelligenceError::Send(e.to_string()));
                }
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                forget();
                Err(IntelligenceError::Timeout(timeout))
            }
        }
    }
}

/// Settles a breaker permit exactly once: explicitly, or as a failure when dropped unsettled.
struct PermitGuard<'a> {
    inner: &'a Inner,
    permit: Option<Permit>,
}

impl PermitGuard<'_> {
    fn settle(&mut self, success: bool) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        if let Ok(mut breaker) = self.inner.breaker.lock() {
            if success {
                breaker.on_success(permit);
            } else {
                breaker.on_failure(permit, Instant::now());
            }
            self.inner
                .metrics
                .circuit_state
                .set(breaker.state(Instant::now()).gauge());
        }
    }
}

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        self.settle(false);
    }
}

/// Set up the reply consumer (topics, assignment at the current end), then route every reply
/// to its pending request, dropping the unknown and dead-lettering the undecodable.
async fn consume(
    inner: std::sync::Weak<Inner>,
    consumer: Arc<StreamConsumer>,
    admin: AdminClient<DefaultClientContext>,
    ready: watch::Sender<bool>,
) {
    'setup: loop {
        let _ = ready.send(false);
        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let config = strong.config.clone();
            drop(strong);
            match assign(&config, &consumer, &admin).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "intelligence consumer not set up yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let _ = ready.send(true);
        loop {
            let message = consumer.recv().await;
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

async fn assign(
    config: &IntelligenceConfig,
    consumer: &Arc<StreamConsumer>,
    admin: &AdminClient<DefaultClientContext>,
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
