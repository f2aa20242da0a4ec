//! The intelligence client against a real Kafka broker (tansu) and the stand-in responder
//! (issues 3 and 7): both contract families, each with its own breaker, a service that serves
//! only code analysis (like the live omniintelligence), fallback, broker outages, correctness
//! under load with hostile replies, and retries.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use omninode_operator::intelligence::wire::{CodeAnalysisOperation, CodegenOperation};
use omninode_operator::intelligence::{
    CircuitState, ContractFamily, IntelligenceClient, IntelligenceError, Metrics,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value, json};
use support::kafka::{Broker, Responder, config, free_port, tansu_bin};

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

async fn ready_client(
    cfg: omninode_operator::intelligence::IntelligenceConfig,
) -> IntelligenceClient {
    let client = IntelligenceClient::connect(cfg, Metrics::default()).unwrap();
    assert!(
        client.wait_ready(Duration::from_secs(30)).await,
        "client did not get ready"
    );
    client
}

/// Every message currently on a topic (partition 0, from the beginning).
fn read_topic(servers: &str, topic: &str) -> Vec<(Option<String>, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(5))
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&list).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (out.len() as i64) < high && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            out.push((
                key,
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_both_contract_families() {
    let Some(bin) = tansu_bin() else { return };
    let broker = Broker::start(&bin, free_port());
    let cfg = config(&broker.servers(), "happy.");
    let client = ready_client(cfg.clone()).await;
    let _responder = Responder::start(
        &broker.servers(),
        "happy.",
        &["--hint-node-type", "reducer"],
    );

    let ca = client
        .code_analysis(
            "svc/node.py",
            "x = 1\n",
            CodeAnalysisOperation::QualityAssessment,
        )
        .await
        .unwrap();
    assert_eq!(ca.quality_score, Some(0.92));
    assert_eq!(ca.source_path.as_deref(), Some("svc/node.py"));
    assert_eq!(ca.operation_type.as_deref(), Some("quality_assessment"));

    let analyze = client
        .codegen(
            CodegenOperation::Analyze,
            "session-1",
            fields(json!({"prd_content": "# X\nKeeps totals.", "analysis_type": "full"})),
        )
        .await
        .unwrap();
    let a = analyze.analysis();
    assert_eq!(a.node_type_hints, ["reducer"]);
    assert_eq!(a.recommended_mixins, ["MixinCaching", "MixinMetrics"]);
    assert_eq!(analyze.confidence, Some(0.9));

    let validate = client
        .codegen(
            CodegenOperation::Validate,
            "session-1",
            fields(json!({"code_content": "x = 1", "node_type": "effect", "contracts": []})),
        )
        .await
        .unwrap();
    assert_eq!(
        (validate.quality_score, validate.is_valid),
        (Some(0.92), Some(true))
    );
    let pattern = client
        .codegen(
            CodegenOperation::Pattern,
            "session-1",
            fields(json!({"node_description": "writer", "node_type": "effect", "limit": 5})),
        )
        .await
        .unwrap();
    assert_eq!(pattern.total_matches, Some(1));
    let mixin = client
        .codegen(
            CodegenOperation::Mixin,
            "session-1",
            fields(json!({"requirements": ["retry"], "node_type": "effect"})),
        )
        .await
        .unwrap();
    assert_eq!(mixin.mixin_names(), ["MixinCaching", "MixinMetrics"]);

    // What went over the wire is exactly the contract.
    let requests = read_topic(&broker.servers(), &cfg.code_analysis_request());
    let (key, value) = &requests[0];
    let v: Value = serde_json::from_str(value).unwrap();
    assert_eq!(
        key.as_deref(),
        v["correlation_id"].as_str(),
        "key = correlation id"
    );
    assert!(
        v.get("payload").is_none(),
        "code-analysis requests are flat"
    );
    assert_eq!(v["operation_type"], "quality_assessment");
    let analyze_req: Value = serde_json::from_str(
        &read_topic(
            &broker.servers(),
            &cfg.codegen_request(CodegenOperation::Analyze),
        )[0]
        .1,
    )
    .unwrap();
    for field in [
        "event_id",
        "event_type",
        "correlation_id",
        "timestamp",
        "source_service",
        "payload",
    ] {
        assert!(analyze_req.get(field).is_some(), "{field}");
    }
    for field in [
        "correlation_id",
        "session_id",
        "timestamp",
        "schema_version",
        "prd_content",
    ] {
        assert!(
            analyze_req["payload"].get(field).is_some(),
            "payload.{field}"
        );
    }
    assert_eq!(analyze_req["event_type"], "codegen.request.analyze");

    client.publish_status(
        "session-1",
        omninode_operator::intelligence::wire::SessionStatus::Completed,
        100.0,
        "done",
    );
    client.flush(Duration::from_secs(5)).await;
    let status = read_topic(&broker.servers(), &cfg.codegen_status());
    assert_eq!(status.last().unwrap().0.as_deref(), Some("session-1"));
    let s: Value = serde_json::from_str(&status.last().unwrap().1).unwrap();
    assert_eq!(
        (s["status"].as_str(), s["progress_percentage"].as_f64()),
        (Some("completed"), Some(100.0))
    );
}

/// `generate` of `examples` (names in examples/) against a broker; the printed documents and
/// how long the whole command took.
fn generate_examples(
    servers: &str,
    prefix: &str,
    out: &std::path::Path,
    examples: &[&str],
    extra: &[&str],
) -> (Vec<Value>, Duration) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let started = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_omninode-operator"))
        .arg("generate")
        .args(examples.iter().map(|e| dir.join(e)))
        .arg("--output")
        .arg(out)
        .args([
            "--format",
            "json",
            "--kafka-bootstrap-servers",
            servers,
            "--kafka-topic-prefix",
            prefix,
        ])
        .args(extra)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    (docs, took)
}

fn generate(servers: &str, prefix: &str, out: &std::path::Path, extra: &[&str]) -> Value {
    let (mut docs, _) = generate_examples(
        servers,
        prefix,
        out,
        &["effect-postgres-writer.yaml"],
        extra,
    );
    docs.remove(0)
}

/// Every example manifest, sorted.
fn all_examples() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

fn condition<'a>(doc: &'a Value, type_: &str) -> &'a Value {
    doc["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_uses_the_service_and_falls_back_without_it() {
    let Some(bin) = tansu_bin() else { return };
    let broker = Broker::start(&bin, free_port());
    let _topics = ready_client(config(&broker.servers(), "gen.")).await;
    let tmp = tempfile::tempdir().unwrap();

    let responder = Responder::start(&broker.servers(), "gen.", &[]);
    let with = generate(&broker.servers(), "gen.", tmp.path(), &[]);
    let analysis = &with["status"]["analysis"];
    assert_eq!(analysis["source"], "omniarchon");
    assert_eq!(analysis["confidence"], 0.9);
    let mixins: Vec<&str> = analysis["nodes"][0]["mixins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        mixins.contains(&"MixinMetrics"),
        "the service's recommendation is in the plan: {mixins:?}"
    );
    assert_eq!(
        analysis["patterns"],
        json!(["idempotent_writer"]),
        "matched patterns are recorded"
    );
    let quality = &with["report"]["nodes"][0]["quality"];
    assert_eq!(quality["service"]["qualityScore"], 0.92);
    assert!(quality["merged"].as_f64().is_some());
    assert_eq!(with["status"]["nodes"][0]["serviceQuality"], 0.92);
    assert_eq!(analysis["qualitySource"], "omniarchon");
    assert!(
        tmp.path()
            .join("postgres-writer")
            .join("node_data_postgres_writer_effect/node_data_postgres_writer_effect/node.py")
            .exists()
    );
    drop(responder);

    let without = generate(
        &broker.servers(),
        "gen.",
        tmp.path(),
        &["--intelligence-code-analysis-timeout-ms", "1000"],
    );
    let analysis = &without["status"]["analysis"];
    assert_eq!(analysis["source"], "builtin");
    assert_eq!(analysis["qualitySource"], "builtin");
    assert_eq!(analysis["confidence"], 0.7);
    assert!(
        without["status"]["nodes"][0]
            .get("serviceQuality")
            .is_none()
    );
    let analyzed = condition(&without, "Analyzed");
    assert!(
        analyzed["message"]
            .as_str()
            .unwrap()
            .contains("built-in pattern library used"),
        "{analyzed}"
    );
    assert_eq!(condition(&without, "Ready")["status"], "True");
}

/// The live omniintelligence serves only code analysis: every node is still scored by it, and
/// the unanswered codegen family costs one analyze timeout for the whole run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_analysis_only_service_scores_every_node_of_the_examples() {
    let Some(bin) = tansu_bin() else { return };
    let broker = Broker::start(&bin, free_port());
    let s = broker.servers();
    let cfg = config(&s, "live.");
    let _topics = ready_client(cfg.clone()).await;
    let _responder = Responder::start(&s, "live.", &["--serve", "code-analysis"]);
    let tmp = tempfile::tempdir().unwrap();
    let examples = all_examples();
    let names: Vec<&str> = examples.iter().map(String::as_str).collect();
    assert!(names.len() >= 9, "{names:?}");

    let (docs, took) = generate_examples(&s, "live.", tmp.path(), &names, &[]);
    println!(
        "{} examples against a code-analysis-only service in {took:?}",
        names.len()
    );
    let mut nodes = 0;
    for doc in &docs {
        let name = &doc["metadata"]["name"];
        assert_eq!(condition(doc, "Ready")["status"], "True", "{name}");
        let analysis = &doc["status"]["analysis"];
        assert_eq!(
            analysis["source"], "builtin",
            "{name}: codegen is not served"
        );
        assert_eq!(analysis["qualitySource"], "omniarchon", "{name}");
        for node in doc["status"]["nodes"].as_array().unwrap() {
            assert_eq!(node["serviceQuality"], 0.92, "{name}: {node}");
            nodes += 1;
        }
    }
    assert!(nodes >= 9, "{nodes} nodes");

    let requests = read_topic(&s, &cfg.code_analysis_request());
    assert_eq!(requests.len(), nodes, "one code-analysis request per node");
    let asked: HashSet<Option<String>> = requests.into_iter().map(|(k, _)| k).collect();
    let completed: HashSet<Option<String>> = read_topic(&s, &cfg.code_analysis_completed())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(asked, completed, "every request was completed");
    let analyze = read_topic(&s, &cfg.codegen_request(CodegenOperation::Analyze));
    assert_eq!(
        analyze.len(),
        1,
        "one analyze timeout opens the codegen breaker"
    );
    assert!(took <= Duration::from_secs(10), "took {took:?}");
}

/// Nothing listens at the bootstrap address: every generation goes straight to the built-in
/// library, without a timeout per generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_costs_the_examples_seconds_not_minutes() {
    let servers = format!("127.0.0.1:{}", free_port());
    let tmp = tempfile::tempdir().unwrap();
    let examples = all_examples();
    let names: Vec<&str> = examples.iter().map(String::as_str).collect();
    let (docs, took) = generate_examples(&servers, "dead.", tmp.path(), &names, &[]);
    println!("{} examples with no broker in {took:?}", names.len());
    assert_eq!(docs.len(), names.len());
    for doc in &docs {
        assert_eq!(condition(doc, "Ready")["status"], "True");
        assert_eq!(doc["status"]["analysis"]["source"], "builtin");
        assert_eq!(doc["status"]["analysis"]["qualitySource"], "builtin");
    }
    assert!(took <= Duration::from_secs(15), "took {took:?}");
}

/// The broker is stopped while `generate` runs: the generations before it use the service,
/// the one in flight and those after it fall back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_mid_run_sends_the_rest_to_the_fallback() {
    let Some(bin) = tansu_bin() else { return };
    let broker = Broker::start(&bin, free_port());
    let s = broker.servers();
    let _topics = ready_client(config(&s, "midrun.")).await;
    // Slow answers stretch the run so that the broker can be stopped in its middle.
    let _responder = Responder::start(&s, "midrun.", &["--delay-ms", "400"]);
    let tmp = tempfile::tempdir().unwrap();
    let examples = all_examples();
    let names: Vec<&str> = examples.iter().map(String::as_str).collect();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        broker.kill();
    });
    let (docs, took) = generate_examples(&s, "midrun.", tmp.path(), &names, &[]);
    killer.join().unwrap();
    println!(
        "{} examples, broker stopped after 2.5 s, in {took:?}",
        names.len()
    );
    let sources: Vec<&str> = docs
        .iter()
        .map(|d| d["status"]["analysis"]["source"].as_str().unwrap_or("?"))
        .collect();
    println!("analysis sources: {sources:?}");
    for doc in &docs {
        assert_eq!(condition(doc, "Ready")["status"], "True");
    }
    assert_eq!(sources.first(), Some(&"omniarchon"), "{sources:?}");
    assert_eq!(sources.last(), Some(&"builtin"), "{sources:?}");
    assert!(took <= Duration::from_secs(15), "took {took:?}");
}

/// A timeout opens its family's breaker at once, leaves the other family alone, and a
/// background probe closes it when the service answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_opens_its_family_breaker_and_a_background_probe_closes_it() {
    let Some(bin) = tansu_bin() else { return };
    let broker = Broker::start(&bin, free_port());
    let mut cfg = config(&broker.servers(), "breaker.");
    cfg.intelligence_code_analysis_timeout_ms = 300;
    cfg.intelligence_breaker_recovery_ms = 1500;
    let client = ready_client(cfg.clone()).await;

    let t = Instant::now();
    let err = client
        .code_analysis("a.py", "x = 1", CodeAnalysisOperation::QualityAssessment)
        .await
        .unwrap_err();
    assert_eq!(err, IntelligenceError::Timeout(Duration::from_millis(300)));
    assert!(t.elapsed() >= Duration::from_millis(290));
    assert_eq!(
        client.circuit_state(ContractFamily::CodeAnalysis),
        CircuitState::Open
    );
    assert_eq!(
        client.circuit_state(ContractFamily::Codegen),
        CircuitState::Closed,
        "the other family is not affected"
    );
    let sent = read_topic(&broker.servers(), &cfg.code_analysis_request()).len();
    assert_eq!(sent, 1);
    let mut fast = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let err = client
            .code_analysis("a.py", "x = 1", CodeAnalysisOperation::QualityAssessment)
            .await
            .unwrap_err();
        fast.push(t.elapsed());
        assert_eq!(err, IntelligenceError::CircuitOpen);
    }
    fast.sort();
    println!("open-circuit fallback: max {:?}", fast.last().unwrap());
    assert!(
        *fast.last().unwrap() < Duration::from_millis(5),
        "open circuit must fail in < 5 ms"
    );
    assert_eq!(
        read_topic(&broker.servers(), &cfg.code_analysis_request()).len(),
        sent,
        "an open circuit sends nothing"
    );

    let _responder = Responder::start(&broker.servers(), "breaker.", &[]);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        client.circuit_state(ContractFamily::CodeAnalysis),
        CircuitState::HalfOpen
    );
    // The request that finds the breaker half-open falls back at once and sends the probe.
    let t = Instant::now();
    let err = client
        .code_analysis("a.py", "x = 1", CodeAnalysisOperation::QualityAssessment)
        .await
        .unwrap_err();
    assert_eq!(err, IntelligenceError::CircuitOpen);
    assert!(t.elapsed() < Duration::from_millis(5), "{:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.circuit_state(ContractFamily::CodeAnalysis) != CircuitState::Closed {
        assert!(
            Instant::now() < deadline,
            "the probe did not close the circuit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = client
        .code_analysis("a.py", "x = 1", CodeAnalysisOperation::QualityAssessment)
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_broker_down_at_start_and_killed_mid_run() {
    let Some(bin) = tansu_bin() else { return };
    let port = free_port();
    let servers = format!("127.0.0.1:{port}");
    let mut cfg = config(&servers, "outage.");
    cfg.intelligence_code_analysis_timeout_ms = 5000;
    cfg.intelligence_breaker_recovery_ms = 500;
    let client = IntelligenceClient::connect(cfg, Metrics::default()).unwrap();

    // No broker: known unreachable within a moment, then requests fail at once.
    let t = Instant::now();
    let err = client
        .code_analysis("a.py", "x", CodeAnalysisOperation::QualityAssessment)
        .await
        .unwrap_err();
    assert_eq!(err, IntelligenceError::BrokerUnavailable, "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(client.broker_down());
    let t = Instant::now();
    let err = client
        .code_analysis("a.py", "x", CodeAnalysisOperation::QualityAssessment)
        .await
        .unwrap_err();
    assert_eq!(err, IntelligenceError::BrokerUnavailable);
    assert!(t.elapsed() < Duration::from_millis(5), "{:?}", t.elapsed());

    // The broker comes: the client sets itself up and is answered.
    let data = tempfile::tempdir().unwrap();
    let broker = Broker::start_persistent(&bin, port, data.path());
    assert!(client.wait_ready(Duration::from_secs(30)).await);
    let responder = Responder::start(&servers, "outage.", &[]);
    assert!(
        eventually_ok(&client, Duration::from_secs(20)).await,
        "no answer after the broker came up"
    );

    // Killed mid-run: a request in flight is released when the broker goes, not at its timeout.
    drop(responder);
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            let t = Instant::now();
            let r = client
                .code_analysis("a.py", "x", CodeAnalysisOperation::QualityAssessment)
                .await;
            (r, t.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.kill();
    let (r, took) = in_flight.await.unwrap();
    println!("in flight when the broker went: {r:?} after {took:?}");
    assert_eq!(r.unwrap_err(), IntelligenceError::BrokerUnavailable);
    assert!(
        took < Duration::from_secs(2),
        "released at once, not at the 5 s timeout"
    );
    assert!(client.broker_down());

    // It returns, with its log: the client resumes on its own.
    let _broker = Broker::start_persistent(&bin, port, data.path());
    let _responder = Responder::start(&servers, "outage.", &[]);
    assert!(
        eventually_ok(&client, Duration::from_secs(40)).await,
        "no answer after the broker returned"
    );
}

/// `n` concurrent code-analysis requests, each with its own source path (which the responder
/// echoes, so a misrouted reply shows).
async fn concurrently(
    client: &IntelligenceClient,
    n: usize,
    prefix: &str,
) -> Vec<(
    String,
    Result<omninode_operator::intelligence::wire::CodeAnalysisCompleted, IntelligenceError>,
)> {
    futures::future::join_all((0..n).map(|i| {
        let client = client.clone();
        let path = format!("{prefix}-{i}.py");
        async move {
            let r = client
                .code_analysis(&path, "x = 1", CodeAnalysisOperation::QualityAssessment)
                .await;
            (path, r)
        }
    }))
    .await
}

async fn eventually_ok(client: &IntelligenceClient, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < end {
        match client
            .code_analysis("a.py", "x", CodeAnalysisOperation::QualityAssessment)
            .await
        {
            Ok(_) => return true,
            Err(e) => {
                if last.as_ref() != Some(&e) {
                    println!("  error: {e:?}");
                }
                last = Some(e)
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("last error: {last:?}; ready: {}", client.is_ready());
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_each_get_their_own_reply() {
    let Some(bin) = tansu_bin() else { return };
    let broker = Broker::start(&bin, free_port());
    let mut cfg = config(&broker.servers(), "load.");
    cfg.intelligence_code_analysis_timeout_ms = 10_000;
    cfg.intelligence_breaker_threshold = 10_000;
    let client = ready_client(cfg.clone()).await;
    let s = broker.servers();
    // Every responder sees every request: replies come shuffled (jitter), late (past the
    // timeout of some), twice, after a foreign reply, and after malformed ones.
    let _shuffled = Responder::start(&s, "load.", &["--jitter-ms", "300", "--mode", "duplicate"]);
    let _late = Responder::start(&s, "load.", &["--delay-ms", "12000"]);
    let _foreign = Responder::start(&s, "load.", &["--mode", "foreign", "--jitter-ms", "200"]);
    let _malformed = Responder::start(&s, "load.", &["--mode", "malformed", "--jitter-ms", "200"]);

    let started = Instant::now();
    let results = concurrently(&client, 1000, "req").await;
    println!(
        "1,000 concurrent requests answered in {:?}",
        started.elapsed()
    );
    let mut mismatches = 0;
    let mut answered = 0;
    for (path, r) in &results {
        match r {
            Ok(reply) => {
                answered += 1;
                if reply.source_path.as_deref() != Some(path.as_str()) {
                    mismatches += 1;
                }
            }
            Err(e) => assert!(matches!(e, IntelligenceError::Timeout(_)), "{path}: {e}"),
        }
    }
    println!("answered {answered}, mismatched {mismatches}");
    assert_eq!(mismatches, 0, "a reply was matched to the wrong request");
    assert_eq!(answered, 1000);
    assert_eq!(client.pending(), 0);

    // Malformed replies are dead-lettered (two per request), foreign and duplicates dropped.
    let dlq = cfg.dlq(&cfg.code_analysis_completed());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut letters = Vec::new();
    while Instant::now() < deadline {
        letters = read_topic(&s, &dlq);
        if letters.len() >= 2000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "dead-lettered (client's count): {}",
        client.metrics().dead_lettered.get()
    );
    assert_eq!(
        client.metrics().dead_lettered.get(),
        2000,
        "malformed replies seen"
    );
    println!("dead letters on the topic: {}", letters.len());
    assert_eq!(letters.len(), 2000, "dead letters on the DLQ topic");
    let kinds: HashSet<String> = letters
        .iter()
        .map(|(_, v)| {
            serde_json::from_str::<Value>(v).unwrap()["error_type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        HashSet::from([
            "InvalidJson".to_string(),
            "MissingCorrelationId".to_string()
        ])
    );
    let letter: Value = serde_json::from_str(&letters[0].1).unwrap();
    for field in [
        "original_topic",
        "original_offset",
        "original_value",
        "error",
        "error_type",
    ] {
        assert!(letter.get(field).is_some(), "{field}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_replies_are_retried_only_when_allowed() {
    let Some(bin) = tansu_bin() else { return };
    let broker = Broker::start(&bin, free_port());
    let mut cfg = config(&broker.servers(), "retry.");
    cfg.intelligence_max_retries = 2;
    cfg.intelligence_retry_backoff_ms = 50;
    let client = ready_client(cfg.clone()).await;

    {
        let _r = Responder::start(
            &broker.servers(),
            "retry.",
            &["--fail-first", "2", "--retry-allowed"],
        );
        let t = Instant::now();
        let ok = client
            .code_analysis("a.py", "x", CodeAnalysisOperation::QualityAssessment)
            .await;
        assert!(ok.is_ok(), "{ok:?}");
        assert!(
            t.elapsed() >= Duration::from_millis(150),
            "backoff 50 + 100 ms"
        );
        assert_eq!(
            read_topic(&broker.servers(), &cfg.code_analysis_request()).len(),
            3
        );
    }
    {
        let _r = Responder::start(
            &broker.servers(),
            "retry.",
            &["--mode", "fail", "--retry-allowed"],
        );
        let err = client
            .code_analysis("a.py", "x", CodeAnalysisOperation::QualityAssessment)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                IntelligenceError::Failed {
                    retryable: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            read_topic(&broker.servers(), &cfg.code_analysis_request()).len(),
            3 + 3,
            "1 + 2 retries, then give up"
        );
    }
    {
        let _r = Responder::start(&broker.servers(), "retry.", &["--mode", "fail"]);
        let err = client
            .code_analysis("a.py", "x", CodeAnalysisOperation::QualityAssessment)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                IntelligenceError::Failed {
                    retryable: false,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            read_topic(&broker.servers(), &cfg.code_analysis_request()).len(),
            6 + 1,
            "retry_allowed: false is not retried"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_later_than_the_timeout_are_dropped_never_misrouted() {
    let Some(bin) = tansu_bin() else { return };
    let broker = Broker::start(&bin, free_port());
    let mut cfg = config(&broker.servers(), "late.");
    cfg.intelligence_code_analysis_timeout_ms = 1000;
    cfg.intelligence_breaker_threshold = 10_000;
    let client = ready_client(cfg).await;
    let _r = Responder::start(&broker.servers(), "late.", &["--jitter-ms", "2000"]);

    let results = concurrently(&client, 300, "late").await;
    let mut timeouts = 0u64;
    for (path, r) in &results {
        match r {
            Ok(reply) => assert_eq!(
                reply.source_path.as_deref(),
                Some(path.as_str()),
                "misrouted reply"
            ),
            Err(IntelligenceError::Timeout(_)) => timeouts += 1,
            Err(e) => panic!("{path}: {e}"),
        }
    }
    println!("{timeouts} of 300 timed out");
    assert!(
        timeouts > 0 && timeouts < 300,
        "the jitter should make some, not all, late"
    );
    assert_eq!(client.pending(), 0, "timed-out requests are forgotten");
    // Every late reply arrives and is dropped: exactly one per timed-out request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.metrics().mismatched_dropped.get() < timeouts && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.metrics().mismatched_dropped.get(), timeouts);
}
