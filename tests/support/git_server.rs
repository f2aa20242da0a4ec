//! Real Git remotes on 127.0.0.1 for the Git output tests: Debian's `git http-backend` (the CGI
//! every smart-HTTP Git server wraps) behind HTTP basic authentication, and `git daemon` for
//! anonymous access. Repositories are bare directories in a temporary root.

#![allow(dead_code)] // shared by every test crate that declares `mod support`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use tokio::io::AsyncWriteExt;

/// Run git with the test's own, hermetic configuration; its stdout.
pub fn git(args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A directory of bare repositories.
pub struct Repos {
    pub root: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Repos {
    pub fn new() -> Repos {
        let tmp = tempfile::tempdir().expect("temporary directory");
        Repos {
            root: tmp.path().to_path_buf(),
            _tmp: tmp,
        }
    }

    /// A new bare repository `name.git` that accepts pushes over HTTP.
    pub fn create(&self, name: &str) -> PathBuf {
        let dir = self.root.join(format!("{name}.git"));
        let d = dir.display().to_string();
        git(&["init", "-q", "--bare", "-b", "main", &d]).expect("git init");
        git(&["--git-dir", &d, "config", "http.receivepack", "true"]).expect("git config");
        git(&["--git-dir", &d, "config", "daemon.receivepack", "true"]).expect("git config");
        dir
    }

    /// `git --git-dir <repo> args…`
    pub fn in_repo(&self, name: &str, args: &[&str]) -> Result<String, String> {
        let d = self.root.join(format!("{name}.git")).display().to_string();
        let mut all = vec!["--git-dir", d.as_str()];
        all.extend_from_slice(args);
        git(&all)
    }
}

#[derive(Clone)]
struct Cgi {
    root: PathBuf,
    authorization: String,
}

/// `git http-backend` behind basic auth, served by axum on a loopback port.
pub struct HttpServer {
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn start(root: &Path, user: &str, password: &str) -> HttpServer {
        let cgi = Cgi {
            root: root.to_path_buf(),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
        };
        let app = axum::Router::new().fallback(handle).with_state(cgi);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpServer {
            base: format!("http://127.0.0.1:{port}"),
            task,
        }
    }

    pub fn url(&self, repo: &str) -> String {
        format!("{}/{repo}.git", self.base)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(cgi): State<Cgi>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    if header("authorization") != cgi.authorization {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", "Basic realm=\"git\"")
            .body(Body::empty())
            .unwrap_or_default();
    }
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", &cgi.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "tester")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::empty())
            .unwrap_or_default();
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body).await;
    }
    let out = match child.wait_with_output().await {
        Ok(out) => out.stdout,
        Err(_) => Vec::new(),
    };
    // CGI: headers, a blank line, the body.
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let Some((end, sep)) = split else {
        return Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::empty())
            .unwrap_or_default();
    };
    let mut response = Response::builder();
    for line in String::from_utf8_lossy(&out[..end]).lines() {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("status") {
                let code = v.split_whitespace().next().unwrap_or("200");
                response = response.status(code.parse::<u16>().unwrap_or(200));
            } else {
                response = response.header(k.trim(), v);
            }
        }
    }
    response
        .body(Body::from(out[end + sep..].to_vec()))
        .unwrap_or_default()
}

/// `git daemon` serving `root` anonymously (fetch and push) on a loopback port.
pub struct Daemon {
    pub base: String,
    child: Child,
    root: PathBuf,
    host: String,
    port: u16,
}

impl Daemon {
    pub fn start(root: &Path) -> Result<Daemon, String> {
        Daemon::start_on(root, "127.0.0.1")
    }

    /// On `host` (an address of this machine): pods reach the host's own address, not its
    /// loopback.
    pub fn start_on(root: &Path, host: &str) -> Result<Daemon, String> {
        let port = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Daemon::spawn(root, host, port)?;
        Ok(Daemon {
            base: format!("git://{host}:{port}"),
            child,
            root: root.to_path_buf(),
            host: host.to_string(),
            port,
        })
    }

    /// `git daemon` runs `git-daemon` as a child of its own: both go in a process group of
    /// their own, which [`Daemon::stop`] ends as a whole.
    fn spawn(root: &Path, host: &str, port: u16) -> Result<Child, String> {
        use std::os::unix::process::CommandExt;
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                &format!("--listen={host}"),
                &format!("--port={port}"),
                &format!("--base-path={}", root.display()),
                &root.display().to_string(),
            ])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        for _ in 0..100 {
            if std::net::TcpStream::connect((host, port)).is_ok() {
                return Ok(child);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err("git daemon did not start".into())
    }

    /// Stop serving: connections to the port are refused until [`Daemon::resume`].
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Serve again on the same port.
    pub fn resume(&mut self) -> Result<(), String> {
        self.child = Daemon::spawn(&self.root, &self.host, self.port)?;
        Ok(())
    }

    pub fn url(&self, repo: &str) -> String {
        format!("{}/{repo}.git", self.base)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// OpenSSH's `sshd` (Debian's openssh-server, unpacked into a cache by scripts/test-all.sh and
/// named by `SSHD_ROOT`) serving `root` on a loopback port to user `git`, who logs in with a
/// key. It runs unprivileged (as the test's user, or as `nobody` when the test runs as root)
/// and learns of user `git` through nss_wrapper, so nothing on the machine changes.
pub struct SshServer {
    pub port: u16,
    /// The user's private key (OpenSSH format) and a known_hosts line for the server.
    pub private_key: String,
    pub known_hosts: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SshServer {
    /// `None` when `SSHD_ROOT` is not set.
    pub fn start(root: &Path) -> Result<Option<SshServer>, String> {
        let Ok(unpacked) = std::env::var("SSHD_ROOT") else {
            return Ok(None);
        };
        let unpacked = PathBuf::from(unpacked);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        // Copies next to its configuration: the cache may sit where the unprivileged user
        // cannot reach (root's home).
        let libs = d.join("lib");
        std::fs::create_dir(&libs).map_err(|e| e.to_string())?;
        let sshd = d.join("sshd");
        std::fs::copy(unpacked.join("usr/sbin/sshd"), &sshd).map_err(|e| e.to_string())?;
        for lib in ["libnss_wrapper.so", "libwrap.so.0"] {
            std::fs::copy(
                unpacked.join("usr/lib/x86_64-linux-gnu").join(lib),
                libs.join(lib),
            )
            .map_err(|e| format!("{lib}: {e}"))?;
        }
        let keygen = |name: &str| {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
                .arg(d.join(name))
                .output()
                .map_err(|e| e.to_string())?;
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| String::from_utf8_lossy(&out.stderr).to_string())
        };
        keygen("host")?;
        keygen("user")?;
        let read = |name: &str| std::fs::read_to_string(d.join(name)).map_err(|e| e.to_string());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        // sshd refuses to run as root without its privilege-separation user: drop to nobody.
        let uid = unsafe { libc::getuid() };
        let run_as = if uid == 0 { 65534 } else { uid };
        let write = |name: &str, text: String| {
            std::fs::write(d.join(name), text).map_err(|e| e.to_string())
        };
        write("authorized_keys", read("user.pub")?)?;
        write(
            "passwd",
            format!("git:x:{run_as}:{run_as}:git:{}:/bin/sh\n", d.display()),
        )?;
        write("group", format!("git:x:{run_as}:\n"))?;
        write(
            "sshd_config",
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\n\
                 StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nPidFile {pid}\n",
                host = d.join("host").display(),
                keys = d.join("authorized_keys").display(),
                pid = d.join("sshd.pid").display(),
            ),
        )?;
        if uid == 0 {
            for path in [d, root] {
                let out = Command::new("chown")
                    .args(["-R", &format!("{run_as}:{run_as}")])
                    .arg(path)
                    .output()
                    .map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(String::from_utf8_lossy(&out.stderr).to_string());
                }
            }
        }
        let mut cmd = if uid == 0 {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={run_as}"),
                &format!("--regid={run_as}"),
                "--clear-groups",
            ])
            .arg(&sshd);
            c
        } else {
            Command::new(&sshd)
        };
        let child = cmd
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .env("LD_PRELOAD", libs.join("libnss_wrapper.so"))
            .env("NSS_WRAPPER_PASSWD", d.join("passwd"))
            .env("NSS_WRAPPER_GROUP", d.join("group"))
            .env("LD_LIBRARY_PATH", &libs)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(d.join("sshd.log")).map_err(|e| e.to_string())?,
            ))
            .spawn()
            .map_err(|e| e.to_string())?;
        let host_key = read("host.pub")?;
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        let server = SshServer {
            port,
            private_key: read("user")?,
            known_hosts: format!("[127.0.0.1]:{port} {}\n", host_key.join(" ")),
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Some(server));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err("sshd did not start".into())
    }

    pub fn url(&self, root: &Path, repo: &str) -> String {
        format!(
            "ssh://git@127.0.0.1:{}{}/{repo}.git",
            self.port,
            root.display()
        )
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
