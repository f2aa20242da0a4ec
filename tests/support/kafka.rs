//! Real components for Kafka tests and benchmarks: a tansu broker on a loopback port and the
//! stand-in responder, both as child processes that are killed when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use omninode_operator::intelligence::IntelligenceConfig;

/// The tansu binary: `TANSU_BIN`, or None (tests then skip, except under CI where they fail).
pub fn tansu_bin() -> Option<String> {
    match std::env::var("TANSU_BIN") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if std::env::var("CI").is_ok() => {
            panic!("TANSU_BIN is not set; scripts/test-all.sh installs the broker")
        }
        _ => {
            eprintln!(
                "skipping: no Kafka broker (set TANSU_BIN; scripts/test-all.sh installs tansu)"
            );
            None
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

pub struct Broker {
    child: Child,
    pub port: u16,
    /// The address it listens on and advertises.
    pub host: String,
    /// The data directory `start` made, removed with the broker.
    data: Option<tempfile::TempDir>,
}

impl Broker {
    /// A broker keeping topics and messages in a SQLite file in a directory of its own.
    ///
    /// Not tansu's `memory://` engine: it caches each partition's high watermark with
    /// optimistic concurrency, and when produce requests race, a stale copy can win, so the
    /// last acknowledged records stay invisible to consumers until something else is produced
    /// (seen as 1,995 of 2,000 acknowledged dead letters on the topic). The SQLite engine
    /// assigns offsets in a transaction.
    pub fn start(bin: &str, port: u16) -> Broker {
        // On tmpfs when there is one: SQLite's fsyncs on a disk would slow every produce.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("a directory for the broker's data");
        let mut broker = Broker::start_persistent(bin, port, dir.path());
        broker.data = Some(dir);
        broker
    }

    /// A broker on tansu's `memory://` engine: 4–6× faster round trips than SQLite here, so
    /// the latency benchmark measures the client rather than the broker's storage. Not for
    /// tests: see the race described at `start`.
    pub fn start_in_memory(bin: &str, port: u16) -> Broker {
        Broker::spawn(bin, "127.0.0.1", port, "memory://tansu/", None)
    }

    /// A broker keeping topics and messages in a SQLite file in `dir`, so that a restart keeps
    /// them, like a real broker's log (tansu built with the `libsql` feature).
    pub fn start_persistent(bin: &str, port: u16, dir: &std::path::Path) -> Broker {
        Broker::spawn(bin, "127.0.0.1", port, "sqlite://tansu.db", Some(dir))
    }

    /// Like [`Broker::start`], listening on and advertising `host` (an address of this
    /// machine that pods can reach).
    pub fn start_on(bin: &str, host: &str, port: u16) -> Broker {
        let dir = tempfile::tempdir().expect("a directory for the broker's data");
        let mut broker = Broker::spawn(bin, host, port, "sqlite://tansu.db", Some(dir.path()));
        broker.data = Some(dir);
        broker
    }

    fn spawn(
        bin: &str,
        host: &str,
        port: u16,
        storage: &str,
        dir: Option<&std::path::Path>,
    ) -> Broker {
        let url = format!("tcp://{host}:{port}");
        let mut command = Command::new(bin);
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let child = command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((host, port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            child,
            port,
            host: host.to_string(),
            data: None,
        }
    }

    pub fn servers(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Responder {
    child: Child,
}

impl Responder {
    /// Start the stand-in responder and wait until it consumes the request topics (they must
    /// exist: start a client first, which creates them).
    pub fn start(servers: &str, prefix: &str, extra: &[&str]) -> Responder {
        let mut child = Command::new(env!("CARGO_BIN_EXE_omninode-responder"))
            .args([
                "--kafka-bootstrap-servers",
                servers,
                "--kafka-topic-prefix",
                prefix,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("responder starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("responder output");
        assert_eq!(line.trim(), "ready", "responder did not get ready");
        Responder { child }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Client configuration for a test: its own topic prefix, short timeouts.
pub fn config(servers: &str, prefix: &str) -> IntelligenceConfig {
    IntelligenceConfig {
        kafka_bootstrap_servers: Some(servers.to_string()),
        kafka_topic_prefix: prefix.to_string(),
        intelligence_timeout_ms: 3000,
        intelligence_code_analysis_timeout_ms: 3000,
        ..Default::default()
    }
}

/// Current resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
