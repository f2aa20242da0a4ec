//! The `omninode-operator` binary: a thin command-line layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use omninode_operator::intelligence::{IntelligenceClient, IntelligenceConfig, Metrics};
use omninode_operator::telemetry::{LogFormat, init_logging};
use omninode_operator::{api, generate, render::Renderer};

#[derive(Parser)]
#[command(
    name = "omninode-operator",
    version,
    about = "Turns PRDs in NodeGeneration resources into runnable ONEX nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate nodes offline from NodeGeneration manifests or bare PRD Markdown files, and print
    /// the status each NodeGeneration would get.
    Generate {
        /// Manifests (multi-document YAML allowed) or `.md` PRDs.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Directory to write `<generation>/<node directory>/…` into.
        #[arg(long, short, default_value = "generated")]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Yaml)]
        format: Format,
        /// Directory of custom templates replacing the embedded ones.
        #[arg(long, env = "OMNINODE_TEMPLATES_DIR")]
        templates: Option<PathBuf>,
        #[command(flatten)]
        intelligence: Box<IntelligenceConfig>,
    },
    /// Train the node-type model from labelled corpora (`DIR/<type>/*.md`) and write it as JSON
    /// (what `src/analysis/classifier_model.json` holds).
    TrainClassifier {
        #[arg(required = true)]
        corpora: Vec<PathBuf>,
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Run the controllers against the cluster of the current kubeconfig (or in-cluster config).
    Run {
        #[command(flatten)]
        config: Box<omninode_operator::controller::RunConfig>,
    },
    /// Print the CustomResourceDefinitions (what `crds/` holds).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Yaml,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let spans = match &cli.command {
        Command::Run { config } => init_logging(
            config.log_format,
            &config.log_level,
            config.otlp_endpoint.as_deref(),
        ),
        _ => init_logging(LogFormat::Text, "warn", None),
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    };
    // Flush the spans still batched.
    if let Some(provider) = spans
        && let Err(e) = provider.shutdown()
    {
        eprintln!("tracing: {e}");
    }
    code
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            tune_malloc(std::time::Duration::from_secs(1), 4 << 20);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(omninode_operator::controller::run(*config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::TrainClassifier { corpora, output } => {
            let dirs: Vec<&std::path::Path> = corpora.iter().map(PathBuf::as_path).collect();
            let names = corpora.iter().map(|p| p.display().to_string()).collect();
            let data = omninode_operator::training::train_on(&dirs, names)?;
            std::fs::write(&output, omninode_operator::analysis::model_json(&data))?;
            eprintln!(
                "trained on {:?} documents; {} features",
                data.documents,
                data.features.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd { output_dir: None } => {
            emit(&api::crds_yaml()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd {
            output_dir: Some(dir),
        } => {
            std::fs::create_dir_all(&dir)?;
            for (name, yaml) in api::crd_files()? {
                std::fs::write(dir.join(name), yaml)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate {
            files,
            output,
            format,
            templates,
            intelligence,
        } => {
            let renderer = match templates {
                Some(dir) => Renderer::from_dir(&dir)?,
                None => Renderer::embedded()?,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let printed = runtime.block_on(async {
                let client = match intelligence.kafka_bootstrap_servers {
                    Some(_) => Some(IntelligenceClient::connect(
                        *intelligence,
                        Metrics::default(),
                    )?),
                    None => None,
                };
                let printed = generate::generate(&renderer, &files, &output, client.as_ref()).await;
                // Status events are handed to the producer without waiting; deliver them.
                if let Some(c) = &client {
                    c.flush(std::time::Duration::from_secs(2)).await;
                }
                anyhow::Ok(printed)
            })?;
            // The consumer task and any unsent status event end with the runtime.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            let mut out = String::new();
            match format {
                Format::Yaml => {
                    for p in &printed {
                        out.push_str("---\n");
                        out.push_str(&serde_norway::to_string(p)?);
                    }
                }
                Format::Json => {
                    out = serde_json::to_string_pretty(&printed)?;
                    out.push('\n');
                }
            }
            emit(&out)?;
            let failed = printed.iter().filter(|p| !p.ready()).count();
            if failed > 0 {
                eprintln!(
                    "{failed} of {} NodeGeneration(s) failed; see their Ready condition",
                    printed.len()
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Write to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Tune glibc's allocator for a long-running controller whose reconciles allocate and free
/// megabytes of watch events, list pages and rendered code between long-lived cache entries.
///
/// - Two arenas: glibc gives every thread that allocates its own arena; two (one per worker on
///   the 2-core machines we target) kept the peak resident set about 15 MiB lower.
/// - A thread calls `malloc_trim` once the resident set, read every `check_period`, has grown
///   by `growth` bytes since the last trim: glibc returns memory only from the top of its heap,
///   so the holes between cache entries stayed resident (at 5,000 generations a fifth of the
///   heap). The trim hands their pages back (`MADV_DONTNEED`) but walks the free lists holding
///   each arena's lock: 50 to 110 ms in a synthetic heap of 300,000 scattered free chunks
///   (30 MiB). Trimming only after growth, and once more when a burst is over, does that
///   during bursts and never in a steady state.
/// - Blocks of 8 KiB and more are mapped on their own (`M_MMAP_THRESHOLD`; glibc's default
///   starts at 128 KiB and rises to 32 MiB as such blocks are freed). Every HTTP response the
///   client reads takes a fresh 8 KiB buffer (hyper's, while the last one's body is still in
///   use), and rendering and list pages take larger ones; freed between long-lived cache
///   entries, they left holes that later allocations did not fill. At 5,000 generations this
///   took the peak from 78 to 53 MiB, for 8 s more CPU over the run (mapping is a system
///   call and fresh pages).
///
/// Figures: docs/benchmarks.md. Must run before any other thread exists.
fn tune_malloc(check_period: std::time::Duration, growth: u64) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only adjusts allocator parameters; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
        let spawned = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(move || {
                let mut schedule = TrimSchedule::new(growth, resident_bytes().unwrap_or(0));
                loop {
                    std::thread::sleep(check_period);
                    let Some(now) = resident_bytes() else {
                        continue;
                    };
                    if !schedule.should_trim(now) {
                        continue;
                    }
                    // SAFETY: malloc_trim takes the allocator's own locks; it is safe to call
                    // from any thread at any time.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                    schedule.trimmed(resident_bytes().unwrap_or(now));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the malloc-trim thread");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (check_period, growth);
}

/// The size from which glibc maps a block on its own (see [`tune_malloc`]): hyper's read
/// buffer is exactly 8 KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 8 << 10;

/// When the heap is worth trimming: once the resident set has grown by `growth` bytes since the
/// last trim (a burst is under way), and once more when it has not grown for a few checks (the
/// burst is over, and what it freed shows in no growth).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
struct TrimSchedule {
    growth: u64,
    /// The lowest resident set since the last trim.
    baseline: u64,
    /// Checks without growth since the last growth, until the burst's end is trimmed.
    quiet: Option<u32>,
}

#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
impl TrimSchedule {
    /// Checks without growth after which a burst counts as over.
    const QUIET_CHECKS: u32 = 5;

    fn new(growth: u64, resident: u64) -> Self {
        TrimSchedule {
            growth,
            baseline: resident,
            quiet: None,
        }
    }

    /// Whether to trim now, the resident set being `resident`.
    fn should_trim(&mut self, resident: u64) -> bool {
        if resident >= self.baseline.saturating_add(self.growth) {
            self.quiet = Some(0);
            return true;
        }
        self.baseline = self.baseline.min(resident);
        self.quiet = self.quiet.map(|q| q + 1);
        if self.quiet == Some(Self::QUIET_CHECKS) {
            self.quiet = None;
            return true;
        }
        false
    }

    /// A trim left the resident set at `resident`.
    fn trimmed(&mut self, resident: u64) {
        self.baseline = resident;
    }
}

/// This process's resident set in bytes (`/proc/self/statm` counts pages).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok()?))
}

#[cfg(test)]
mod tests {
    use super::TrimSchedule;

    #[test]
    fn the_heap_is_trimmed_during_a_burst_and_once_after_it_never_in_a_steady_state() {
        const MIB: u64 = 1 << 20;
        let mut s = TrimSchedule::new(4 * MIB, 50 * MIB);
        // Steady: no trim, however long.
        assert!((0..100).all(|_| !s.should_trim(51 * MIB)));
        // A burst: a trim per 4 MiB of growth.
        assert!(s.should_trim(55 * MIB));
        s.trimmed(53 * MIB);
        assert!(!s.should_trim(56 * MIB));
        assert!(s.should_trim(57 * MIB));
        s.trimmed(57 * MIB);
        // Over: one more trim after five quiet checks, then none.
        let trims: Vec<bool> = (0..20).map(|_| s.should_trim(57 * MIB)).collect();
        assert_eq!(trims.iter().filter(|t| **t).count(), 1);
        assert!(trims[4]);
    }
}
