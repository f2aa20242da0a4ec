//! The controller under load against a real control plane: N NodeGenerations (the examples,
//! cycled) applied at once; time until all are Ready and until every node's Deployment and
//! Service exist, write requests per NodeGeneration, the operator's peak RSS and where the API
//! server spent its time.
//!
//! `KUBEBUILDER_ASSETS=<dir> cargo bench --bench controller [-- COUNT [CONCURRENCY]]`
//! (defaults 1000 and 8). Skips without a control plane.

#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cluster::{Cluster, HOW_TO_ENABLE, Operator, many_generations};
use std::collections::BTreeMap;

use futures::StreamExt;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, ResourceExt};
use omninode_operator::api::{GeneratedNode, NodeGeneration};
use serde::de::DeserializeOwned;

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

/// How long each phase may take: 900 s per 5,000 generations (the 5,000 run takes about a third
/// of that on a 2-core machine), and never less than 900 s. Past 10,000 twice that: the API
/// server, etcd and the controller manager, on the same two cores, then make the nodes'
/// Deployments, ReplicaSets and pods at a third of the rate (about 350 a minute at 20,000).
fn time_allowed(count: usize) -> Duration {
    let linear = (count as u64 * 900 / 5000).max(900);
    Duration::from_secs(if count > 10_000 { 2 * linear } else { linear })
}

fn run(c: &Cluster, ns: &str, count: usize, concurrency: &str) -> Result<(), String> {
    c.create_namespace(ns)?;
    let mut op = Operator::start(c, ns, &["--concurrency", concurrency])?;

    let manifests = many_generations(count)?;
    let generations: Vec<NodeGeneration> = manifests
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(serde_norway::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let writes_before = op.writes()?;
    let cpu_before = cpu(c, &op);
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

    // Watched, like `kubectl wait` does: each change reaches the harness once. (Listing all
    // of them every 250 ms cost the API server ~10 % of its CPU in encoding the lists.)
    let mut peak_rss = 0;
    let deadline = Instant::now() + time_allowed(count);
    let ready = runtime.block_on(wait_for(
        api.clone(),
        &op,
        &mut peak_rss,
        deadline,
        count,
        is_ready,
    ))?;
    let nodes = ready
        .iter()
        .filter_map(|ng| ng.status.as_ref()?.node_count)
        .sum::<i32>() as usize;
    let all_ready = started.elapsed();
    let writes_ready = op.writes()? - writes_before;
    // The GeneratedNode side runs behind: each node's Deployment and Service, then its status.
    let gn_api: Api<GeneratedNode> = Api::namespaced(api.clone().into_client(), ns);
    runtime.block_on(wait_for(
        gn_api,
        &op,
        &mut peak_rss,
        deadline,
        nodes,
        is_reconciled,
    ))?;
    let all_children = started.elapsed();
    // Let Deployment status updates arrive, then count again.
    std::thread::sleep(Duration::from_secs(10));
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
        "  every node's Deployment+Service: {:.1} s  ({nodes} GeneratedNodes reconciled)",
        all_children.as_secs_f64()
    );
    println!(
        "  write requests per generation:  {:.2} when all Ready, {:.2} once all nodes settled",
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
        let n = op.writes_to(Some(resource))?;
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
    report_cpu(&cpu_before, &cpu(c, &op));
    report_etcd(c);
    report_api_server_time(c);
    println!(
        "  operator VmHWM:                 {:.1} MiB",
        op.hwm_kib() as f64 / 1024.0
    );
    report_resync(&mut op, count, nodes)
}

/// A full resync: the operator killed (as an OOM kill would) and started again lists every
/// object and reconciles each once, finding nothing to do. How long that takes, what it asks of
/// the API server and what it costs in memory.
fn report_resync(op: &mut Operator, count: usize, nodes: usize) -> Result<(), String> {
    op.kill();
    let started = Instant::now();
    op.restart()?;
    let ready = started.elapsed();
    let reconciled = |controller: &str| {
        op.counter(
            "omninode_reconciles_total",
            &[&format!("controller=\"{controller}\"")],
        )
        .unwrap_or(0.0) as usize
    };
    let deadline = started + time_allowed(count);
    let mut peak_rss = 0;
    while reconciled("nodegeneration") < count || reconciled("generatednode") < nodes {
        if Instant::now() > deadline {
            return Err(format!(
                "resync: {} of {count} NodeGenerations and {} of {nodes} GeneratedNodes \
                 reconciled after {} s",
                reconciled("nodegeneration"),
                reconciled("generatednode"),
                time_allowed(count).as_secs()
            ));
        }
        peak_rss = peak_rss.max(op.rss_kib());
        std::thread::sleep(Duration::from_millis(100));
    }
    let resynced = started.elapsed();
    peak_rss = peak_rss.max(op.rss_kib());
    println!("  full resync after a restart:");
    println!(
        "    ready (every cache listed):   {:.1} s",
        ready.as_secs_f64()
    );
    println!(
        "    every object reconciled once: {:.1} s",
        resynced.as_secs_f64()
    );
    let requests = |verb: &str| {
        op.counter(
            "omninode_api_requests_total",
            &[&format!("verb=\"{verb}\"")],
        )
        .unwrap_or(0.0)
    };
    println!(
        "    API requests: {} list, {} watch, {} get, {} writes",
        requests("list"),
        requests("watch"),
        requests("get"),
        op.writes()?
    );
    println!(
        "    operator peak RSS:            {:.1} MiB (VmRSS sampled after ready), VmHWM {:.1} MiB",
        peak_rss as f64 / 1024.0,
        op.hwm_kib() as f64 / 1024.0
    );
    Ok(())
}

/// Watch `api` until `want` objects satisfy `done` in their latest version, and return those;
/// samples the operator's RSS every 250 ms meanwhile.
async fn wait_for<K>(
    api: Api<K>,
    op: &Operator,
    peak_rss: &mut u64,
    deadline: Instant,
    want: usize,
    done: impl Fn(&K) -> bool,
) -> Result<Vec<K>, String>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut finished: BTreeMap<String, K> = BTreeMap::new();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Apply(o) | Event::InitApply(o))) => {
                    if done(&o) {
                        finished.insert(o.name_any(), o);
                    } else {
                        finished.remove(&o.name_any());
                    }
                    if finished.len() >= want {
                        return Ok(finished.into_values().collect());
                    }
                }
                Some(Ok(Event::Delete(o))) => {
                    finished.remove(&o.name_any());
                }
                Some(Ok(_)) => {}
                // The watcher retries with backoff; a failed attempt is only worth a line.
                Some(Err(e)) => eprintln!("watch: {e}"),
                None => return Err("the watch ended".into()),
            },
            _ = tick.tick() => {
                *peak_rss = (*peak_rss).max(op.rss_kib());
                if Instant::now() > deadline {
                    return Err(format!("only {} of {want} done in time", finished.len()));
                }
            }
        }
    }
}

/// The GeneratedNode controller has applied this spec's Deployment and Service.
fn is_reconciled(gn: &GeneratedNode) -> bool {
    gn.status
        .as_ref()
        .is_some_and(|s| s.observed_generation == gn.metadata.generation)
}

fn is_ready(ng: &NodeGeneration) -> bool {
    ng.status.as_ref().is_some_and(|s| {
        s.observed_generation == ng.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.is_true())
    })
}

/// etcd's database as the run left it (with every revision), then compacted and defragmented
/// (the objects a cluster keeps).
fn report_etcd(c: &Cluster) {
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let sizes = |c: &Cluster| match c.etcd_db_sizes() {
        Ok((total, in_use)) => format!("{:.1} MiB, {:.1} MiB in use", mib(total), mib(in_use)),
        Err(e) => format!("unknown ({e})"),
    };
    println!("  etcd database after the run:    {}", sizes(c));
    if let Some(bytes) = c.etcd_db_bytes() {
        println!(
            "  etcd database file:             {:.1} MiB",
            mib(bytes as f64)
        );
    }
    match c.etcd_compact_and_defrag() {
        Ok(()) => println!("  etcd after compaction+defrag:   {}", sizes(c)),
        Err(e) => println!("  etcd after compaction+defrag:   not measured ({e})"),
    }
}

fn report_cpu(before: &[(String, f64)], after: &[(String, f64)]) {
    println!("  CPU seconds used during the run:");
    for (name, a) in after {
        let b = before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, s)| *s);
        println!("    {name:<24} {:>6.1}", a - b);
    }
}

fn report_api_server_time(c: &Cluster) {
    match api_server_time(c) {
        Ok(top) => {
            println!("  API server request time (sum of apiserver_request_duration_seconds):");
            for (seconds, count, what) in top {
                println!("    {what:<40} {seconds:>7.1} s over {count:>6.0} requests");
            }
        }
        Err(e) => println!("  API server request time: unavailable ({e})"),
    }
}

/// Where the API server has spent its request time since it started (just before the run):
/// everyone's requests, the operator's, kube-controller-manager's and the harness's, by verb and
/// resource, largest first.
fn api_server_time(c: &Cluster) -> Result<Vec<(f64, f64, String)>, String> {
    let metrics = c.kubectl_ok(&["get", "--raw", "/metrics"])?;
    let mut by_key: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for line in metrics.lines() {
        let (is_sum, rest) =
            if let Some(r) = line.strip_prefix("apiserver_request_duration_seconds_sum{") {
                (true, r)
            } else if let Some(r) = line.strip_prefix("apiserver_request_duration_seconds_count{") {
                (false, r)
            } else {
                continue;
            };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        if verb == "WATCH" || verb == "CONNECT" {
            continue; // long-running: their duration is how long the watch stayed open
        }
        let key = match sub.as_str() {
            "" => format!("{verb} {resource}"),
            s => format!("{verb} {resource}/{s}"),
        };
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        let entry = by_key.entry(key).or_default();
        if is_sum {
            entry.0 += v;
        } else {
            entry.1 += v;
        }
    }
    let mut top: Vec<_> = by_key.into_iter().map(|(k, (s, n))| (s, n, k)).collect();
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    top.truncate(12);
    Ok(top)
}

/// CPU seconds so far of the control plane's processes and the operator's.
fn cpu(c: &Cluster, op: &Operator) -> Vec<(String, f64)> {
    let mut all = c.cpu_seconds();
    all.extend(
        op.cpu_seconds()
            .map(|s| ("omninode-operator".to_string(), s)),
    );
    all
}
