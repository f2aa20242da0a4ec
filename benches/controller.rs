//! The controller under load against a real control plane: N NodeGenerations (the examples,
//! cycled) applied at once; time until all are Ready, write requests per NodeGeneration and
//! the operator's peak RSS.
//!
//! `KUBEBUILDER_ASSETS=<dir> cargo bench --bench controller [-- COUNT [CONCURRENCY]]`
//! (defaults 1000 and 8). Skips without a control plane.

#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cluster::{Cluster, HOW_TO_ENABLE, Operator, many_generations};
use futures::StreamExt;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use omninode_operator::api::NodeGeneration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let count: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let concurrency: String = args.get(1).cloned().unwrap_or_else(|| "8".into());
    let cluster = match Cluster::from_env() {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("controller bench: skipped (no control plane): {HOW_TO_ENABLE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("controller bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ns = "bench";
    if let Err(e) = run(&cluster, ns, count, &concurrency) {
        let mut cluster = cluster;
        eprintln!(
            "controller bench failed: {e}; logs in {}",
            cluster.keep_logs().display()
        );
        // Returning (not exiting) stops the control plane on drop.
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run(c: &Cluster, ns: &str, count: usize, concurrency: &str) -> Result<(), String> {
    c.create_namespace(ns)?;
    let op = Operator::start(c, ns, &["--concurrency", concurrency])?;

    let manifests = many_generations(count)?;
    let generations: Vec<NodeGeneration> = manifests
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(serde_norway::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let writes_before = op.writes()?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let api: Api<NodeGeneration> = runtime.block_on(async {
        let kubeconfig = Kubeconfig::read_from(&c.kubeconfig).map_err(|e| e.to_string())?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| e.to_string())?;
        let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
        Ok::<_, String>(Api::namespaced(client, ns))
    })?;
    let started = Instant::now();
    // Created through the API with 32 requests in flight, so the client is not what is measured.
    runtime.block_on(async {
        let results: Vec<_> = futures::stream::iter(generations.iter())
            .map(|ng| {
                let api = api.clone();
                async move { api.create(&PostParams::default(), ng).await }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        results
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())
    })?;
    let applied = started.elapsed();

    // Poll every 250 ms (a list through the API is cheaper than kubectl's table printing).
    let mut peak_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        peak_rss = peak_rss.max(op.rss_kib());
        let list = runtime
            .block_on(api.list(&ListParams::default()))
            .map_err(|e| e.to_string())?;
        let ready = list.items.iter().filter(|ng| is_ready(ng)).count();
        if ready == count {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {ready} of {count} Ready after 900 s"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let all_ready = started.elapsed();
    let writes_ready = op.writes()? - writes_before;
    // Let the GeneratedNode side settle (Deployment status updates), then count again.
    std::thread::sleep(Duration::from_secs(15));
    peak_rss = peak_rss.max(op.rss_kib());
    let writes_settled = op.writes()? - writes_before;

    let per_minute = count as f64 / all_ready.as_secs_f64() * 60.0;
    println!("controller bench: {count} NodeGenerations, concurrency {concurrency}");
    println!(
        "  created (32 in flight):         {:.1} s",
        applied.as_secs_f64()
    );
    println!(
        "  all Ready after:                {:.1} s  ({per_minute:.0} generations/minute)",
        all_ready.as_secs_f64()
    );
    println!(
        "  write requests per generation:  {:.2} when all Ready, {:.2} after 15 s settling",
        writes_ready / count as f64,
        writes_settled / count as f64
    );
    for resource in [
        "configmaps",
        "generatednodes",
        "nodegenerations/status",
        "deployments",
        "services",
        "generatednodes/status",
        "events",
    ] {
        let n = op.counter(
            "omninode_api_requests_total",
            &[&format!("resource=\"{resource}\"")],
        )? - op.counter(
            "omninode_api_requests_total",
            &[&format!("resource=\"{resource}\""), "verb=\"get\""],
        )? - op.counter(
            "omninode_api_requests_total",
            &[&format!("resource=\"{resource}\""), "verb=\"list\""],
        )? - op.counter(
            "omninode_api_requests_total",
            &[&format!("resource=\"{resource}\""), "verb=\"watch\""],
        )?;
        println!("    {resource:<24} {:.2} per generation", n / count as f64);
    }
    let reads = op.counter("omninode_api_requests_total", &["verb=\"get\""])?;
    println!(
        "  GET requests per generation:    {:.2}",
        reads / count as f64
    );
    println!(
        "  operator peak RSS:              {:.1} MiB (VmRSS sampled)",
        peak_rss as f64 / 1024.0
    );
    if let Some(hwm) = op
        .pid()
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
    {
        println!("  operator VmHWM:                 {:.1} MiB", hwm / 1024.0);
    }
    Ok(())
}

fn is_ready(ng: &NodeGeneration) -> bool {
    ng.status.as_ref().is_some_and(|s| {
        s.observed_generation == ng.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.is_true())
    })
}
