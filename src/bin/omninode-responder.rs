//! A stand-in intelligence service for local development and tests. It speaks both contract
//! families with the operator's own wire types and answers deterministically — or, on request,
//! slowly, with failures, with malformed or foreign replies, twice, shuffled, or not at all.
//! `--serve code-analysis` serves only the code-analysis family, as the live omniintelligence
//! does today: the codegen request topics are then not even read.
//!
//! `omninode-responder --kafka-bootstrap-servers 127.0.0.1:9092 [--serve all|code-analysis]
//! [--mode normal|fail|malformed|foreign|duplicate|silent] [--delay-ms N] [--jitter-ms N]
//! [--fail-first N --retry-allowed]`
//! It prints `ready` on stdout once it consumes the request topics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use omninode_operator::intelligence::IntelligenceConfig;
use omninode_operator::intelligence::wire::{CodeAnalysisRequest, CodegenEvent, CodegenOperation};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

#[derive(Parser, Clone)]
#[command(
    about = "Stand-in intelligence service (both contract families) for development and tests"
)]
struct Args {
    #[command(flatten)]
    kafka: IntelligenceConfig,
    /// Which contract families to serve.
    #[arg(long, value_enum, default_value_t = Serve::All)]
    serve: Serve,
    #[arg(long, value_enum, default_value_t = Mode::Normal)]
    mode: Mode,
    /// Delay before every reply.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Extra random delay (0..N ms) per reply, which also shuffles the order of replies.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Fail the first N requests (then answer normally).
    #[arg(long, default_value_t = 0)]
    fail_first: u32,
    /// Whether failed replies allow a retry.
    #[arg(long)]
    retry_allowed: bool,
    /// Mixins recommended by analyze and mixin replies.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "MixinCaching,MixinMetrics"
    )]
    recommend_mixins: Vec<String>,
    /// Node-type hint of analyze replies.
    #[arg(long)]
    hint_node_type: Option<String>,
    /// Quality score of validate and code-analysis replies.
    #[arg(long, default_value_t = 0.92)]
    quality_score: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Serve {
    /// Code analysis and codegen.
    All,
    /// Code analysis only, like the live omniintelligence (omninode-intelligence 0.24).
    CodeAnalysis,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Normal,
    Fail,
    Malformed,
    Foreign,
    Duplicate,
    Silent,
}

struct Responder {
    args: Args,
    producer: FutureProducer,
    answered: AtomicU32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let servers = args
        .kafka
        .kafka_bootstrap_servers
        .clone()
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", &servers);
    base.set("socket.nagle.disable", "true");
    for (k, v) in args.kafka.properties() {
        base.set(k, v);
    }
    let producer: FutureProducer = base.clone().set("linger.ms", "1").create()?;
    let consumer: StreamConsumer = base
        .clone()
        .set(
            "group.id",
            format!("omninode-responder-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "1")
        .create()?;

    if args.kafka.kafka_ensure_topics {
        // Create the topics too, so that the responder can be started before the operator.
        let admin: AdminClient<DefaultClientContext> = base.create()?;
        let names = args.kafka.all_topics();
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
            .collect();
        loop {
            match admin
                .create_topics(
                    &topics,
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))),
                )
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    eprintln!("waiting for the broker: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    let mut requests = vec![args.kafka.code_analysis_request()];
    if args.serve == Serve::All {
        requests.extend(
            CodegenOperation::ALL
                .iter()
                .map(|op| args.kafka.codegen_request(*op)),
        );
    }
    let mut list = TopicPartitionList::new();
    for topic in &requests {
        // Wait for the operator (or the test) to have created the topics.
        let partitions = loop {
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(3)) {
                Ok(m)
                    if m.topics()
                        .first()
                        .is_some_and(|t| !t.partitions().is_empty()) =>
                {
                    break m.topics()[0].partitions().len();
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        for p in 0..partitions as i32 {
            let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(3))?;
            list.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
    }
    consumer.assign(&list)?;
    println!("ready");

    let responder = Arc::new(Responder {
        args,
        producer,
        answered: AtomicU32::new(0),
    });
    loop {
        let message = match consumer.recv().await {
            Ok(m) => m.detach(),
            Err(e) => {
                eprintln!("consumer error: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let r = responder.clone();
        tokio::spawn(async move { r.answer(message.topic(), message.payload()).await });
    }
}

impl Responder {
    async fn answer(&self, topic: &str, payload: Option<&[u8]>) {
        let Some(value) = payload.and_then(|p| serde_json::from_slice::<Value>(p).ok()) else {
            return; // the live service does not answer a value that is not JSON
        };
        if self.args.mode == Mode::Silent {
            return;
        }
        let delay = self.args.delay_ms
            + if self.args.jitter_ms > 0 {
                rand_below(self.args.jitter_ms)
            } else {
                0
            };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let n = self.answered.fetch_add(1, Ordering::SeqCst);
        let fail = self.args.mode == Mode::Fail || n < self.args.fail_first;
        let cfg = &self.args.kafka;
        let (reply_topic, cid, body, headers) = if topic == cfg.code_analysis_request() {
            let Ok(req) = serde_json::from_value::<CodeAnalysisRequest>(value) else {
                return;
            };
            let op = serde_json::to_value(req.operation_type).unwrap_or(Value::Null);
            if fail {
                let body = json!({"correlation_id": req.correlation_id, "error_code": "ANALYSIS_ERROR",
                    "error_message": "stand-in failure", "operation_type": op, "source_path": req.source_path,
                    "retry_allowed": self.args.retry_allowed, "processing_time_ms": 1.0});
                (cfg.code_analysis_failed(), req.correlation_id, body, None)
            } else {
                let q = self.args.quality_score;
                let body = json!({"correlation_id": req.correlation_id, "result": {"language": req.language},
                    "source_path": req.source_path, "quality_score": q, "onex_compliance": (q - 0.04).max(0.0),
                    "issues_count": 0, "recommendations_count": 1, "processing_time_ms": 1.5,
                    "operation_type": op, "complexity_score": 0.3, "maintainability_score": 0.9,
                    "results_summary": {}, "cache_hit": false});
                (
                    cfg.code_analysis_completed(),
                    req.correlation_id,
                    body,
                    None,
                )
            }
        } else {
            let Some(op) = CodegenOperation::ALL
                .into_iter()
                .find(|op| cfg.codegen_request(*op) == topic)
            else {
                return;
            };
            let Ok(event) = serde_json::from_value::<CodegenEvent>(value) else {
                return;
            };
            let cid = event
                .payload
                .get("correlation_id")
                .and_then(Value::as_str)
                .unwrap_or(&event.correlation_id)
                .to_string();
            let payload = self.codegen_payload(op, &cid, &event, fail);
            let envelope = json!({"event_id": uuid::Uuid::new_v4().to_string(),
                "event_type": format!("codegen.response.{}", op.as_str()), "topic": cfg.codegen_response(op),
                "timestamp": "2026-01-01T00:00:00Z", "correlation_id": cid, "source_service": "omniarchon-standin",
                "payload_type": format!("{}_response", op.as_str()), "payload": payload});
            (cfg.codegen_response(op), cid, envelope, Some(op))
        };
        match self.args.mode {
            Mode::Malformed => {
                self.send(&reply_topic, Some(&cid), b"{not json").await;
                self.send(&reply_topic, None, br#"{"quality_score": 0.1}"#)
                    .await;
            }
            Mode::Foreign => {
                let foreign = uuid::Uuid::new_v4().to_string();
                let mut other = body.clone();
                other["correlation_id"] = json!(foreign);
                if let Some(p) = other.get_mut("payload") {
                    p["correlation_id"] = json!(foreign);
                }
                self.send(&reply_topic, Some(&foreign), other.to_string().as_bytes())
                    .await;
            }
            _ => {}
        }
        let bytes = body.to_string();
        self.send_with_headers(&reply_topic, &cid, bytes.as_bytes(), headers)
            .await;
        if self.args.mode == Mode::Duplicate {
            self.send_with_headers(&reply_topic, &cid, bytes.as_bytes(), headers)
                .await;
        }
    }

    fn codegen_payload(
        &self,
        op: CodegenOperation,
        cid: &str,
        event: &CodegenEvent,
        fail: bool,
    ) -> Value {
        let q = self.args.quality_score;
        let session = event
            .payload
            .get("session_id")
            .cloned()
            .unwrap_or(Value::Null);
        if fail {
            return json!({"correlation_id": cid, "session_id": session, "quality_score": 0, "is_valid": false,
                "details": {"error_code": format!("{}_ERROR", op.as_str().to_uppercase()), "error_message": "stand-in failure"}});
        }
        let mixins = &self.args.recommend_mixins;
        match op {
            CodegenOperation::Analyze => json!({"correlation_id": cid, "session_id": session,
                "analysis_result": {"node_type_hints": self.args.hint_node_type.iter().collect::<Vec<_>>(),
                    "recommended_mixins": mixins, "operations": []},
                "confidence": 0.9, "processing_time_ms": 2.0}),
            CodegenOperation::Validate => json!({"correlation_id": cid, "session_id": session,
                "validation_result": {"issues": []}, "quality_score": q, "onex_compliance_score": (q - 0.04).max(0.0),
                "is_valid": true, "processing_time_ms": 2.0}),
            CodegenOperation::Pattern => json!({"correlation_id": cid, "session_id": session,
                "pattern_result": [{"pattern_name": "idempotent_writer", "score": 0.9}], "total_matches": 1,
                "processing_time_ms": 2.0}),
            CodegenOperation::Mixin => json!({"correlation_id": cid, "session_id": session,
                "mixin_recommendations": mixins.iter().map(|m| json!({"mixin_name": m, "confidence": 0.9})).collect::<Vec<_>>(),
                "total_recommendations": mixins.len(), "processing_time_ms": 2.0}),
        }
    }

    async fn send(&self, topic: &str, key: Option<&str>, value: &[u8]) {
        let mut record = FutureRecord::<str, [u8]>::to(topic).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Err((e, _)) = self
            .producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
        {
            eprintln!("send to {topic} failed: {e}");
        }
    }

    async fn send_with_headers(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
        op: Option<CodegenOperation>,
    ) {
        let mut record = FutureRecord::to(topic).key(key).payload(value);
        if let Some(op) = op {
            // Like the live service: the correlation_id *header* is a fresh random id.
            let random = uuid::Uuid::new_v4().to_string();
            let event_type = format!("codegen.response.{}", op.as_str());
            record = record.headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "event_type",
                        value: Some(event_type.as_str()),
                    })
                    .insert(Header {
                        key: "source_service",
                        value: Some("omniarchon-standin"),
                    })
                    .insert(Header {
                        key: "correlation_id",
                        value: Some(random.as_str()),
                    }),
            );
        }
        if let Err((e, _)) = self
            .producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
        {
            eprintln!("send to {topic} failed: {e}");
        }
    }
}

/// A small random number without another dependency: the low bits of a fresh UUIDv4.
fn rand_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64) % n.max(1)
}
