//! Pipeline benchmark (issue 2, check 8). Prints medians and tails; figures go to
//! docs/benchmarks.md.
//!
//! `cargo bench --bench pipeline` (`OMNINODE_BENCH_DIR=/dev/shm cargo bench --bench pipeline`
//! writes to memory instead of the disk)
//! 1. In process: 1,000 PRDs (the corpora and examples, each made unique) through parse → plan →
//!    render → quality → write; time per node of render + validate + write, and per PRD overall.
//! 2. Whole command: `omninode-operator generate one.md` spawned repeatedly.
//!
//! Peak memory: the process's VmHWM, and the children's max RSS.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use omninode_operator::analysis::{Overrides, plan};
use omninode_operator::generate::write_node;
use omninode_operator::manifest::{Entry, read_input};
use omninode_operator::prd::parse;
use omninode_operator::quality::{Thresholds, score};
use omninode_operator::render::Renderer;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: n={} median={:.3} ms p95={:.3} ms p99={:.3} ms max={:.3} ms",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.95)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap())
    );
}

/// Size of the code ConfigMap the controller would apply for `node`, as JSON.
fn code_config_map_bytes(node: &omninode_operator::render::RenderedNode) -> usize {
    let cm = omninode_operator::publish::configmap::config_map(
        "bench-code",
        Some("bench"),
        Default::default(),
        node,
        None,
    )
    .unwrap();
    serde_json::to_vec(&cm).unwrap().len()
}

fn corpus(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    // OMNINODE_BENCH_CORPUS (directories, `:`-separated) replaces the corpus, so that two
    // builds can be compared on the same PRDs.
    let mut stack = vec![root.join("tests/corpus"), root.join("examples")];
    if let Some(dirs) = std::env::var_os("OMNINODE_BENCH_CORPUS") {
        stack = std::env::split_paths(&dirs).collect();
    }
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                // Neither the hostile corpus nor the invalid systems make a plan.
                if !p.ends_with("hostile") && !p.ends_with("systems-invalid") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|e| e == "md" || e == "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut prds = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for entry in read_input(&f.display().to_string(), &bytes) {
            if let Entry::Generation { prd: Ok(prd), .. } = entry {
                prds.push(prd);
            }
        }
    }
    prds
}

fn peak_rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let base = corpus(&root);
    assert!(!base.is_empty());
    let renderer = Renderer::embedded().unwrap();
    // Where files are written: the system temp dir, or OMNINODE_BENCH_DIR (e.g. /dev/shm, to
    // take a throttled virtual disk out of the measurement).
    let out = match std::env::var_os("OMNINODE_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    println!("writing under {}", out.path().display());
    let thresholds = Thresholds {
        overall: 0.8,
        onex: 0.7,
    };

    let (mut t_render, mut t_score, mut t_write, mut t_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut per_node = Vec::new();
    let mut cm_bytes = Vec::new();
    let mut per_prd = Vec::new();
    let mut nodes = 0usize;
    for i in 0..1000 {
        // Each PRD unique, so nothing is accidentally cached between iterations.
        let text = format!(
            "{}\n\n- Record an audit entry for request batch {i}\n",
            base[i % base.len()]
        );
        let t0 = Instant::now();
        let prd = parse(&text).unwrap();
        let p = plan(
            &prd,
            &Overrides {
                fallback_name: "bench",
                ..Default::default()
            },
            None,
        )
        .unwrap();
        for node in &p.nodes {
            let t1 = Instant::now();
            let rendered = renderer
                .render(node, "bench", &p.external_systems, &p.dependencies, None)
                .unwrap();
            let t2 = Instant::now();
            let report = score(&rendered, thresholds);
            let t3 = Instant::now();
            write_node(
                &out.path().join(format!("{i}/{}", rendered.dir_name)),
                &rendered,
                None,
            )
            .unwrap();
            let t4 = Instant::now();
            cm_bytes.push(code_config_map_bytes(&rendered));
            per_node.push(t4 - t1);
            t_render.push(t2 - t1);
            t_score.push(t3 - t2);
            t_write.push(t4 - t3);
            t_cpu.push(t3 - t1);
            assert!(report.parses);
            nodes += 1;
        }
        per_prd.push(t0.elapsed());
    }
    println!("in-process over 1,000 PRDs ({nodes} nodes):");
    summary("  render+validate+write per node", per_node);
    summary("    of which render", t_render);
    summary("    of which validate (quality)", t_score);
    summary("    of which write", t_write);
    summary("  render+validate (CPU only) per node", t_cpu);
    summary("  whole pipeline per PRD", per_prd);
    cm_bytes.sort_unstable();
    println!(
        "  code ConfigMap per node (JSON as applied): median={:.1} KiB max={:.1} KiB",
        cm_bytes[cm_bytes.len() / 2] as f64 / 1024.0,
        *cm_bytes.last().unwrap() as f64 / 1024.0
    );
    println!(
        "  peak RSS of the benchmark process: {} KiB",
        peak_rss_kib("VmHWM:")
    );

    // Whole command, as a user runs it.
    let bin = env!("CARGO_BIN_EXE_omninode-operator");
    let one = out.path().join("one.md");
    std::fs::write(&one, &base[0]).unwrap();
    let mut runs = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let status = std::process::Command::new(bin)
            .args(["generate", one.to_str().unwrap(), "--output"])
            .arg(out.path().join("cmd"))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        runs.push(t.elapsed());
        assert!(status.success());
    }
    println!("whole command `generate one.md`:");
    summary("  wall time", runs);
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the zeroed struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    println!("  peak RSS of a generate process: {} KiB", usage.ru_maxrss);
}
