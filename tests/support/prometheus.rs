//! A real Prometheus server (Debian's `prometheus` package, unpacked by scripts/test-all.sh) on
//! loopback: it scrapes the operator every second and evaluates the chart's alert rules, and
//! the tests ask its HTTP API what a dashboard or an alert would see.

#![allow(dead_code)] // shared by every test crate that declares `mod support`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::kafka::free_port;

pub struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    pub log: PathBuf,
}

/// The server binary (`PROMETHEUS`, set by scripts/test-all.sh), or None where there is none.
pub fn binary() -> Option<String> {
    let bin = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| bin)
}

impl Prometheus {
    /// Scrape `target` (host:port) every second with the extra target label `namespace`,
    /// evaluating `rule_file` every second too.
    pub fn start(
        bin: &str,
        target: &str,
        namespace: &str,
        rule_file: &Path,
        log: PathBuf,
    ) -> Result<Prometheus, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port();
        // Itself too: its rule-group iterations tell when the rules have seen fresh data.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: omninode-operator\n    static_configs:\n\
             \x20     - targets: ['{target}']\n        labels:\n          namespace: {namespace}\n\
             \x20 - job_name: prometheus\n    static_configs:\n\
             \x20     - targets: ['127.0.0.1:{port}']\n",
            rules = rule_file.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(Stdio::from(out))
            .spawn()
            .map_err(|e| format!("{bin}: {e}"))?;
        let prometheus = Prometheus {
            child,
            port,
            _dir: dir,
            log,
        };
        // Ready once it has scraped the operator: counts before the first scrape would be in
        // its first sample, and a rate() never sees those.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !prometheus
            .query("up{job=\"omninode-operator\"} == 1")
            .is_ok_and(|r| !r.is_empty())
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "prometheus not ready within 60 s; see {}",
                    prometheus.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(prometheus)
    }

    /// An instant query; the `data.result` vector.
    pub fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let body = self.get(&format!("/api/v1/query?query={}", encode(expr)))?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("{expr}: {body}"));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The exemplars of the series `selector` selects, over all time: each series' `exemplars`.
    pub fn exemplars(&self, selector: &str) -> Result<Vec<serde_json::Value>, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let body = self.get(&format!(
            "/api/v1/query_exemplars?query={}&start=0&end={now}",
            encode(selector)
        ))?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        Ok(answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// The alerts of `name` in state `firing`.
    pub fn firing(&self, name: &str) -> Result<usize, String> {
        Ok(self
            .query(&format!(
                "ALERTS{{alertname=\"{name}\",alertstate=\"firing\"}}"
            ))?
            .len())
    }

    /// How many times the rule groups have been evaluated so far (to wait for fresh ones).
    pub fn evaluations(&self) -> Result<f64, String> {
        let result = self.query("sum(prometheus_rule_group_iterations_total)")?;
        Ok(value(result.first()).unwrap_or(0.0))
    }

    fn get(&self, path: &str) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
        let (head, body) = resp.split_once("\r\n\r\n").ok_or("malformed response")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "{}: {body}",
                head.lines().next().unwrap_or_default()
            ));
        }
        Ok(body.to_string())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one instant-vector sample (`[time, "value"]`).
pub fn value(sample: Option<&serde_json::Value>) -> Option<f64> {
    sample?["value"][1].as_str()?.parse().ok()
}

/// Percent-encoding of a query parameter (RFC 3986: everything but the unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
