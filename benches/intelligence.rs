//! Intelligence round trips through a real broker (tansu) and the stand-in responder
//! (issue 3, check 6). Prints p50/p95/p99 at concurrency 1 and 100, and the client's memory.
//!
//! `TANSU_BIN=… cargo bench --bench intelligence`

#[path = "../tests/support/kafka.rs"]
mod kafka;

use std::time::{Duration, Instant};

use kafka::{Broker, Responder, config, free_port, rss_kib, tansu_bin};
use omninode_operator::intelligence::wire::CodeAnalysisOperation;
use omninode_operator::intelligence::{IntelligenceClient, Metrics};

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let p = |q: f64| {
        samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
    };
    println!(
        "{name}: n={} p50={:.2} ms p95={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        p(0.5),
        p(0.95),
        p(0.99),
        p(1.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(bin) = tansu_bin() else { return };
    let broker = Broker::start_in_memory(&bin, free_port());
    let rss_before = rss_kib();
    let client =
        IntelligenceClient::connect(config(&broker.servers(), "bench."), Metrics::default())
            .unwrap();
    assert!(client.wait_ready(Duration::from_secs(30)).await);
    let _responder = Responder::start(&broker.servers(), "bench.", &[]);
    let code = "def f(x: int) -> int:\n    return x + 1\n".repeat(20);

    // Warm up connections and metadata.
    for _ in 0..20 {
        client
            .code_analysis("warm.py", &code, CodeAnalysisOperation::QualityAssessment)
            .await
            .unwrap();
    }

    let mut sequential = Vec::new();
    for i in 0..500 {
        let t = Instant::now();
        client
            .code_analysis(
                &format!("s{i}.py"),
                &code,
                CodeAnalysisOperation::QualityAssessment,
            )
            .await
            .unwrap();
        sequential.push(t.elapsed());
    }
    summary("concurrency 1   ", sequential);

    let mut concurrent = Vec::new();
    for round in 0..20 {
        let batch = futures::future::join_all((0..100).map(|i| {
            let client = client.clone();
            let code = code.clone();
            async move {
                let t = Instant::now();
                client
                    .code_analysis(
                        &format!("c{round}-{i}.py"),
                        &code,
                        CodeAnalysisOperation::QualityAssessment,
                    )
                    .await
                    .unwrap();
                t.elapsed()
            }
        }))
        .await;
        concurrent.extend(batch);
    }
    summary("concurrency 100 ", concurrent);
    let rss_after = rss_kib();
    println!(
        "client memory: RSS {} KiB before connect, {} KiB after 2,520 requests: +{} KiB",
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before)
    );
}
