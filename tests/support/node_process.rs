//! Generated nodes run as real processes: a venv holding only the runtime wheel the binary
//! carries (what the node-runtime image holds), and a node started from a code directory with
//! `python -m <package>`, exactly as its Deployment starts it.

#![allow(dead_code)] // shared by every test crate that declares `mod support`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The interpreter of a fresh venv with the runtime installed from the binary's wheel, made once
/// per test process. `None` when no Python is configured (`OMNINODE_PYTHON`, which
/// scripts/test-all.sh sets); fresh venvs start from that Python's base interpreter.
pub fn runtime_python() -> Result<Option<PathBuf>, String> {
    static VENV: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    VENV.get_or_init(make_venv).clone()
}

fn make_venv() -> Result<Option<PathBuf>, String> {
    let Ok(tooling) = std::env::var("OMNINODE_PYTHON") else {
        return Ok(None);
    };
    let base =
        output(Command::new(&tooling).args(["-c", "import sys; print(sys._base_executable)"]))?;
    let dir = std::env::temp_dir().join(format!("omninode-runtime-venv-{}", std::process::id()));
    let wheels = dir.join("dist");
    let wheel = omninode_operator::runtime_dist::write_runtime(&wheels)
        .map_err(|e| format!("writing the runtime wheel: {e}"))?;
    let venv = dir.join("venv");
    output(
        Command::new(base.trim())
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    let python = venv.join("bin/python");
    output(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg(&wheel)
            .arg("confluent-kafka"),
    )?;
    Ok(Some(python))
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A node process on a free loopback port; killed when dropped.
pub struct NodeProcess {
    child: Child,
    pub port: u16,
}

impl NodeProcess {
    /// `python -m <package>` with `code` on PYTHONPATH, as a Deployment with a Git source runs it.
    pub fn start(python: &Path, code: &Path, package: &str) -> Result<NodeProcess, String> {
        NodeProcess::spawn(python, &["-m", package], Some(code), code, &[], None)
    }

    /// `python -m omninode_runtime.launch <files> <package>` on a code ConfigMap's flat files
    /// (keys as file names), as a Deployment with a ConfigMap source runs it.
    pub fn start_flat(python: &Path, files: &Path, package: &str) -> Result<NodeProcess, String> {
        NodeProcess::start_flat_with(python, files, package, &[], None)
    }

    /// As [`NodeProcess::start_flat`], with extra environment variables (a Deployment's) and
    /// the node's log (stderr) written to `log`.
    pub fn start_flat_with(
        python: &Path,
        files: &Path,
        package: &str,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<NodeProcess, String> {
        let files_arg = files.to_string_lossy().into_owned();
        let args = ["-m", "omninode_runtime.launch", files_arg.as_str(), package];
        NodeProcess::spawn(python, &args, None, files, env, log)
    }

    fn spawn(
        python: &Path,
        args: &[&str],
        pythonpath: Option<&Path>,
        cwd: &Path,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<NodeProcess, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut command = Command::new(python);
        command
            .args(args)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env_remove("PYTHONPATH");
        if let Some(path) = pythonpath {
            command.env("PYTHONPATH", path);
        }
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).map_err(|e| e.to_string())?),
            None => Stdio::null(),
        };
        let child = command
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env_remove("TRACEPARENT")
            .envs(env.iter().copied())
            .current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut node = NodeProcess { child, port };
        node.wait_ready(Duration::from_secs(10))?;
        Ok(node)
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = self.request("GET", "/health/ready", None) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the node exited with {status} before it was ready"));
            }
            if start.elapsed() > within {
                return Err(format!("the node was not ready within {within:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `POST /process` with `body`: the status code and the JSON answer.
    pub fn process(&self, body: &Value) -> Result<(u16, Value), String> {
        let (status, text) = self.request("POST", "/process", Some(&body.to_string()))?;
        let value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        Ok((status, value))
    }

    /// `POST /process` with `body` and a `traceparent` header: the status code, the answer's
    /// `traceparent` header and its JSON body.
    pub fn process_traced(
        &self,
        body: &Value,
        traceparent: &str,
    ) -> Result<(u16, Option<String>, Value), String> {
        let (status, head, text) = self.exchange(
            "POST",
            "/process",
            Some(&body.to_string()),
            &format!("traceparent: {traceparent}\r\n"),
        )?;
        let answer = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("traceparent"))
            .map(|(_, v)| v.trim().to_string());
        let value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        Ok((status, answer, value))
    }

    /// One HTTP/1.0 exchange (the connection closes after it).
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        self.exchange(method, path, body, "")
            .map(|(status, _, text)| (status, text))
    }

    /// One HTTP/1.0 exchange with extra header lines: status, response head, body.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &str,
    ) -> Result<(u16, String, String), String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let body = body.unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line in {answer:?}"))?;
        let (head, text) = answer
            .split_once("\r\n\r\n")
            .unwrap_or((answer.as_str(), ""));
        Ok((status, head.to_string(), text.to_string()))
    }

    /// SIGTERM, and the exit code once it stopped (within 5 s, or it is killed).
    pub fn stop(mut self) -> Result<i32, String> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status.code().unwrap_or(-1));
            }
            if start.elapsed() > Duration::from_secs(5) {
                return Err("the node did not stop within 5 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
