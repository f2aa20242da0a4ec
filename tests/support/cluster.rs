//! A real Kubernetes control plane for the e2e tests, by the envtest convention: the binaries
//! in `KUBEBUILDER_ASSETS` (`etcd`, `kube-apiserver`, optionally `kube-controller-manager`)
//! started on loopback with throw-away certificates and RBAC, or an existing cluster from
//! `OMNINODE_E2E_KUBECONFIG`. The harness only consumes binaries it is pointed at.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where controller-runtime's envtest looks when `KUBEBUILDER_ASSETS` is unset.
pub const DEFAULT_ASSETS: &str = "/usr/local/kubebuilder/bin";

pub const HOW_TO_ENABLE: &str = "set KUBEBUILDER_ASSETS to a directory with etcd and \
kube-apiserver (and kube-controller-manager for garbage collection), or \
OMNINODE_E2E_KUBECONFIG to a cluster's kubeconfig; see docs/testing.md";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub struct Cluster {
    pub kubeconfig: PathBuf,
    /// Whether garbage collection and the Deployment controller run.
    pub has_controller_manager: bool,
    dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
    /// etcd, kube-apiserver, kube-controller-manager (in that order), each restartable.
    processes: std::sync::Mutex<Vec<Process>>,
    /// Client URL of the etcd this harness runs (none for an existing cluster).
    etcd_url: Option<String>,
    /// The binary directory the control plane came from (none for an existing cluster): where
    /// a `kubelet` and `kube-scheduler` for real pods are looked for.
    pub assets: Option<PathBuf>,
    /// The host address the API server also serves on, advertised as the endpoint of the
    /// `kubernetes` Service, when a kubelet and kube-proxy are beside it: pods (the operator's
    /// own, under the chart) reach the API through the Service as in any cluster.
    pub pod_api_address: Option<String>,
}

/// Run `cmd` to completion; Err with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    run(Command::new("openssl").current_dir(dir).args(args)).map(|_| ())
}

/// The host's address on its default route (the kubelet refuses a loopback node IP).
pub fn host_address() -> Result<String, String> {
    let out = run(Command::new("ip").args(["-4", "-o", "route", "get", "1.1.1.1"]))?;
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            return words.next().map(str::to_string).ok_or_else(|| out.clone());
        }
    }
    Err(format!("no source address in `ip route get`: {out}"))
}

/// CA, serving certificate for 127.0.0.1, the `kubernetes` Service (and `host`, when pods are
/// to reach the server there), an admin client certificate and the service-account signing
/// key, all made with the openssl command line.
fn certificates(dir: &Path, host: Option<&str>) -> Result<(), String> {
    let host = host.map(|h| format!(",IP:{h}")).unwrap_or_default();
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes.default.svc{host}\n\
             extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("client.ext"),
        "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
    )
    .map_err(|e| e.to_string())?;
    for args in [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=e2e-ca",
        ][..],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "admin.key",
            "-out",
            "admin.csr",
            "-subj",
            "/O=system:masters/CN=e2e-admin",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "admin.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "admin.crt",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ],
        &["genrsa", "-out", "sa.key", "2048"],
        &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
    ] {
        openssl(dir, args)?;
    }
    Ok(())
}

/// A control-plane program and how it was started.
struct Process {
    child: Child,
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl Process {
    fn start(bin: &Path, args: &[String], log: &Path) -> Result<Process, String> {
        Ok(Process {
            child: spawn(bin, args, log)?,
            bin: bin.to_path_buf(),
            args: args.to_vec(),
            log: log.to_path_buf(),
        })
    }

    fn name(&self) -> String {
        self.bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Start `bin` with its output in `log` (appended to).
pub fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    Command::new(bin)
        .args(args)
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))
}

impl Cluster {
    /// The control plane the environment points at; `Ok(None)` when it points at none.
    pub fn from_env() -> Result<Option<Cluster>, String> {
        if let Ok(kubeconfig) = std::env::var("OMNINODE_E2E_KUBECONFIG")
            && !kubeconfig.is_empty()
        {
            let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
            let cluster = Cluster {
                kubeconfig: PathBuf::from(kubeconfig),
                has_controller_manager: true,
                dir: tmp.path().to_path_buf(),
                tmp: Some(tmp),
                processes: Default::default(),
                etcd_url: None,
                assets: None,
                pod_api_address: None,
            };
            cluster.install_crds()?;
            return Ok(Some(cluster));
        }
        match std::env::var("KUBEBUILDER_ASSETS") {
            Ok(assets) if !assets.is_empty() => Cluster::start(Path::new(&assets)).map(Some),
            // envtest's default location.
            _ if Path::new(DEFAULT_ASSETS).join("kube-apiserver").exists() => {
                Cluster::start(Path::new(DEFAULT_ASSETS)).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn start(assets: &Path) -> Result<Cluster, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = tmp.path().to_path_buf();
        // Real pods that call the API (the chart's operator) need it on the host's address
        // and a kube-proxy that leads the `kubernetes` Service there.
        let pod_api_address = ["kubelet", "kube-proxy"]
            .iter()
            .all(|b| assets.join(b).is_file())
            .then(host_address)
            .transpose()?;
        certificates(&d, pod_api_address.as_deref())?;
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let mut cluster = Cluster {
            kubeconfig: d.join("kubeconfig"),
            has_controller_manager: false,
            dir: d.clone(),
            tmp: Some(tmp),
            processes: Default::default(),
            etcd_url: Some(format!("http://127.0.0.1:{etcd_port}")),
            assets: Some(assets.to_path_buf()),
            pod_api_address: pod_api_address.clone(),
        };
        let p = |f: &str| d.join(f).display().to_string();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        cluster.push(Process::start(
            &assets.join("etcd"),
            &[
                "--name=e2e".into(),
                format!("--data-dir={}", p("etcd")),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=e2e={peer_url}"),
                "--unsafe-no-fsync".into(),
            ],
            &d.join("etcd.log"),
        )?);
        // On loopback only, with no endpoints for the `kubernetes` Service; or on every address,
        // advertising the host's as that Service's endpoint (kept by the lease reconciler).
        let (bind, advertise, endpoints) = match &pod_api_address {
            Some(host) => ("0.0.0.0", host.as_str(), "lease"),
            None => ("127.0.0.1", "127.0.0.1", "none"),
        };
        cluster.push(Process::start(
            &assets.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--secure-port={api_port}"),
                format!("--bind-address={bind}"),
                format!("--advertise-address={advertise}"),
                format!("--tls-cert-file={}", p("server.crt")),
                format!("--tls-private-key-file={}", p("server.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                "--authorization-mode=RBAC".into(),
                // Lets a namespace give its pods a toleration (the real-pod node is tainted so
                // that only the pods of the scenario that started it land there).
                "--enable-admission-plugins=PodTolerationRestriction".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                // Room for thousands of Services (the benchmark makes one per node).
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                format!("--endpoint-reconciler-type={endpoints}"),
                format!("--cert-dir={}", p("apiserver-certs")),
            ],
            &d.join("kube-apiserver.log"),
        )?);
        let server = format!("https://127.0.0.1:{api_port}");
        let kc = p("kubeconfig");
        for args in [
            vec![
                "config",
                "set-cluster",
                "e2e",
                "--server",
                &server,
                "--certificate-authority",
                &p("ca.crt"),
                "--embed-certs=true",
            ],
            vec![
                "config",
                "set-credentials",
                "admin",
                "--client-certificate",
                &p("admin.crt"),
                "--client-key",
                &p("admin.key"),
                "--embed-certs=true",
            ],
            vec![
                "config",
                "set-context",
                "e2e",
                "--cluster=e2e",
                "--user=admin",
            ],
            vec!["config", "use-context", "e2e"],
        ] {
            run(Command::new("kubectl").env("KUBECONFIG", &kc).args(&args))?;
        }
        cluster.wait_ready(Duration::from_secs(60))?;
        let kcm = assets.join("kube-controller-manager");
        if kcm.exists() {
            cluster.push(Process::start(
                &kcm,
                &[
                    format!("--kubeconfig={kc}"),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={}", free_port()),
                    format!("--flex-volume-plugin-dir={}", p("flexvolume")),
                    format!("--cert-dir={}", p("kcm-certs")),
                    "--controllers=*,-service-ca-certificate-publisher-controller".into(),
                    format!("--service-account-private-key-file={}", p("sa.key")),
                    format!("--root-ca-file={}", p("ca.crt")),
                    format!("--cluster-signing-cert-file={}", p("ca.crt")),
                    format!("--cluster-signing-key-file={}", p("ca.key")),
                    "--leader-elect=false".into(),
                    "--use-service-account-credentials=false".into(),
                ],
                &d.join("kube-controller-manager.log"),
            )?);
            cluster.has_controller_manager = true;
        }
        cluster.install_crds()?;
        Ok(cluster)
    }

    fn push(&mut self, process: Process) {
        if let Ok(p) = self.processes.get_mut() {
            p.push(process);
        }
    }

    /// Stop the control-plane program `name` (`etcd`, `kube-apiserver`) for `down`, start it
    /// again with the same flags and data, and wait until the API answers.
    pub fn restart(&self, name: &str, down: Duration) -> Result<(), String> {
        self.while_stopped(name, || {
            std::thread::sleep(down);
            Ok(())
        })
    }

    /// Stop `name`, run `meanwhile`, start it again as [`Cluster::restart`] does.
    pub fn while_stopped<T>(
        &self,
        name: &str,
        meanwhile: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, String> {
        self.while_stopped_then(name, &[], meanwhile)
    }

    /// As [`Cluster::while_stopped`], starting it again with `extra` flags after its own (an
    /// empty `extra` restores the original flags).
    pub fn while_stopped_then<T>(
        &self,
        name: &str,
        extra: &[&str],
        meanwhile: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, String> {
        let result = {
            let mut processes = self.processes.lock().map_err(|e| e.to_string())?;
            let p = processes
                .iter_mut()
                .find(|p| p.name() == name)
                .ok_or(format!("this harness runs no {name}"))?;
            let _ = p.child.kill();
            let _ = p.child.wait();
            let result = meanwhile();
            let mut args = p.args.clone();
            args.extend(extra.iter().map(|a| a.to_string()));
            p.child = spawn(&p.bin, &args, &p.log)?;
            result
        };
        self.wait_ready(Duration::from_secs(120))?;
        result
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self
                .kubectl(&["get", "--raw", "/readyz"])
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "kube-apiserver not ready within {timeout:?}; logs in {}",
                    self.dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn install_crds(&self) -> Result<(), String> {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        self.kubectl_ok(&["apply", "--server-side", "-f", &crds.display().to_string()])?;
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/nodegenerations.codegen.omninode.ai",
            "crd/generatednodes.codegen.omninode.ai",
            "--timeout=30s",
        ])?;
        Ok(())
    }

    /// Where the control plane's logs are (kept until the cluster is dropped).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keep the logs after the cluster stops (for a failed run).
    pub fn keep_logs(&mut self) -> PathBuf {
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.keep();
        }
        self.dir.clone()
    }

    pub fn kubectl(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
    }

    /// Run kubectl and return its stdout, or an error with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.kubectl(args).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `kubectl … -o json` parsed.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl_ok(&all)?;
        serde_json::from_str(&out).map_err(|e| e.to_string())
    }

    /// Apply YAML from a string.
    pub fn apply(&self, namespace: &str, yaml: &str) -> Result<(), String> {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .args(["apply", "-n", namespace, "-f", "-"]);
        let out = pipe(&mut cmd, yaml)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "kubectl apply: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Size of etcd's database file (`member/snap/db`) when this harness runs etcd.
    pub fn etcd_db_bytes(&self) -> Option<u64> {
        let db = self.dir.join("etcd/member/snap/db");
        std::fs::metadata(db).ok().map(|m| m.len())
    }

    /// Compact etcd's history up to now and defragment it, through etcd's JSON gateway: what
    /// remains is the data a cluster keeps (the API server compacts every 5 minutes on its own).
    pub fn etcd_compact_and_defrag(&self) -> Result<(), String> {
        let url = self.etcd_url.as_deref().ok_or("not this harness's etcd")?;
        let post = |path: &str, body: &str| -> Result<serde_json::Value, String> {
            let out = run(Command::new("curl").args([
                "-sf",
                "-X",
                "POST",
                &format!("{url}{path}"),
                "-d",
                body,
            ]))?;
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
        };
        let status = post("/v3/maintenance/status", "{}")?;
        let revision = status["header"]["revision"]
            .as_str()
            .ok_or("no revision in etcd's status")?
            .to_string();
        post(
            "/v3/kv/compaction",
            &format!(r#"{{"revision": "{revision}", "physical": true}}"#),
        )?;
        post("/v3/maintenance/defragment", "{}")?;
        Ok(())
    }

    /// Write `count` keys to etcd directly (past the API server, which may be down): its
    /// revision moves on, as other writers in a real cluster would move it.
    pub fn etcd_churn(&self, count: usize) -> Result<(), String> {
        use base64::Engine;
        let url = self.etcd_url.as_deref().ok_or("not this harness's etcd")?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for i in 0..count {
            run(Command::new("curl").args([
                "-sf",
                "-X",
                "POST",
                &format!("{url}/v3/kv/put"),
                "-d",
                &format!(
                    r#"{{"key": "{}", "value": "{}"}}"#,
                    b64(&format!("/e2e-churn/{i}")),
                    b64("x")
                ),
            ]))?;
        }
        Ok(())
    }

    /// etcd's `etcd_mvcc_db_total_size_in_bytes` and `…_in_use_in_bytes`.
    pub fn etcd_db_sizes(&self) -> Result<(f64, f64), String> {
        let url = self.etcd_url.as_deref().ok_or("not this harness's etcd")?;
        let out = run(Command::new("curl").args(["-sf", &format!("{url}/metrics")]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .ok_or(format!("{name} not in etcd's metrics"))
        };
        Ok((
            value("etcd_mvcc_db_total_size_in_bytes ")?,
            value("etcd_mvcc_db_total_size_in_use_in_bytes ")?,
        ))
    }

    /// CPU seconds each control-plane process (etcd, kube-apiserver, kube-controller-manager)
    /// has used so far, by program name.
    pub fn cpu_seconds(&self) -> Vec<(String, f64)> {
        let Ok(processes) = self.processes.lock() else {
            return Vec::new();
        };
        processes
            .iter()
            .filter_map(|p| {
                let pid = p.child.id();
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
                let name = exe.file_name()?.to_string_lossy().into_owned();
                Some((name, cpu_seconds(pid)?))
            })
            .collect()
    }

    pub fn create_namespace(&self, name: &str) -> Result<(), String> {
        self.kubectl_ok(&["create", "namespace", name]).map(|_| ())
    }
}

/// Run `cmd` with `input` on its standard input; its output.
pub fn pipe(cmd: &mut Command, input: &str) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    child.wait_with_output().map_err(|e| e.to_string())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop in reverse order: controller manager, API server, etcd.
        if let Ok(processes) = self.processes.get_mut() {
            for p in processes.iter_mut().rev() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

/// The operator binary running against the cluster, watching one namespace.
pub struct Operator {
    child: Option<Child>,
    pub metrics_port: u16,
    pub log: PathBuf,
    args: Vec<String>,
    kubeconfig: PathBuf,
    /// When set, the process gets exactly these variables (plus KUBECONFIG, PATH, RUST_LOG)
    /// instead of the test's environment: the configuration a Deployment would give it.
    env: Option<Vec<(String, String)>>,
}

impl Operator {
    pub fn start(cluster: &Cluster, namespace: &str, extra: &[&str]) -> Result<Operator, String> {
        Operator::start_with(cluster, namespace, cluster.kubeconfig.clone(), extra)
    }

    /// As [`Operator::start`], with the credentials in `kubeconfig` instead of the admin's.
    pub fn start_with(
        cluster: &Cluster,
        namespace: &str,
        kubeconfig: PathBuf,
        extra: &[&str],
    ) -> Result<Operator, String> {
        let metrics_port = free_port();
        let log = cluster.dir().join(format!("operator-{namespace}.log"));
        let mut args = vec![
            "run".to_string(),
            "--namespace".into(),
            namespace.into(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--log-format".into(),
            "json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut op = Operator {
            child: None,
            metrics_port,
            log,
            args,
            kubeconfig,
            env: None,
        };
        op.restart()?;
        Ok(op)
    }

    /// Run as a Deployment would: `args`, only the variables in `env`, the credentials in
    /// `kubeconfig`; the metrics address is moved to a free loopback port.
    pub fn start_as(
        cluster: &Cluster,
        label: &str,
        kubeconfig: PathBuf,
        args: Vec<String>,
        mut env: Vec<(String, String)>,
    ) -> Result<Operator, String> {
        let metrics_port = free_port();
        env.retain(|(k, _)| k != "METRICS_ADDR");
        env.push(("METRICS_ADDR".into(), format!("127.0.0.1:{metrics_port}")));
        let mut op = Operator {
            child: None,
            metrics_port,
            log: cluster.dir().join(format!("operator-{label}.log")),
            args,
            kubeconfig,
            env: Some(env),
        };
        op.restart()?;
        Ok(op)
    }

    /// Start (again) with the same flags; logs are appended.
    pub fn restart(&mut self) -> Result<(), String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let bin = env!("CARGO_BIN_EXE_omninode-operator");
        // A profiler to run the operator under (`heaptrack`, `perf record --`), for benchmarks.
        let mut cmd = match std::env::var("OMNINODE_OPERATOR_WRAPPER") {
            Ok(wrapper) if !wrapper.trim().is_empty() => {
                let mut words = wrapper.split_whitespace();
                let mut cmd = Command::new(words.next().unwrap_or_default());
                cmd.args(words).arg(bin);
                cmd
            }
            _ => Command::new(bin),
        };
        let log_filter = std::env::var("OMNINODE_E2E_LOG").ok();
        match &self.env {
            // The Deployment's LOG_LEVEL applies unless OMNINODE_E2E_LOG asks otherwise.
            Some(env) => {
                cmd.env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .envs(env.iter().map(|(k, v)| (k, v)));
                if let Some(filter) = log_filter {
                    cmd.env("RUST_LOG", filter);
                }
            }
            None => {
                cmd.env(
                    "RUST_LOG",
                    log_filter.unwrap_or_else(|| "info,kube=warn".into()),
                );
            }
        }
        let child = cmd
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.get("/readyz").is_ok_and(|b| b.starts_with("ok")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "operator not ready within 60 s; see {}",
            self.log.display()
        ))
    }

    /// SIGKILL: no graceful shutdown, as a crash or an OOM kill would be.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status and how long it took.
    pub fn terminate(&mut self) -> Option<(std::process::ExitStatus, Duration)> {
        let mut c = self.child.take()?;
        let started = Instant::now();
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().ok().map(|s| (s, started.elapsed()))
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// GET a path of the operator's HTTP endpoints; the body.
    pub fn get(&self, path: &str) -> Result<String, String> {
        let mut s =
            TcpStream::connect(("127.0.0.1", self.metrics_port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
        let (head, body) = resp.split_once("\r\n\r\n").ok_or("malformed response")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(head.lines().next().unwrap_or_default().to_string());
        }
        Ok(body.to_string())
    }

    /// Sum of a counter family's samples whose labels contain every given `key="value"`.
    pub fn counter(&self, name: &str, labels: &[&str]) -> Result<f64, String> {
        let text = self.get("/metrics")?;
        Ok(sum_samples(&text, |l| {
            l.starts_with(name) && labels.iter().all(|kv| l.contains(kv))
        }))
    }

    /// Write requests (create, update, patch, delete) sent to the API server so far.
    pub fn writes(&self) -> Result<f64, String> {
        self.writes_to(None)
    }

    /// Write requests (create, update, patch, delete) the operator has sent to one resource
    /// (`"generatednodes/status"`), or to all with `None`; one scrape of /metrics.
    pub fn writes_to(&self, resource: Option<&str>) -> Result<f64, String> {
        let text = self.get("/metrics")?;
        let resource = resource.map(|r| format!("resource=\"{r}\""));
        Ok(sum_samples(&text, |l| {
            l.starts_with("omninode_api_requests_total{")
                && ["create", "update", "patch", "delete"]
                    .iter()
                    .any(|verb| l.contains(&format!("verb=\"{verb}\"")))
                && resource.as_ref().is_none_or(|r| l.contains(r.as_str()))
        }))
    }

    /// CPU seconds the operator process has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid()?)
    }

    /// Resident set size of the operator process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The kernel's high-water mark of the operator process's resident set, in KiB: its true
    /// peak since it started, including moments no sampling caught.
    pub fn hwm_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        self.pid()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Manifests of `count` NodeGenerations made from the examples, cycled.
pub fn many_generations(count: usize) -> Result<String, String> {
    // OMNINODE_BENCH_EXAMPLES replaces the examples, so that two builds can be compared on the
    // same workload.
    let dir = std::env::var_os("OMNINODE_BENCH_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")).into());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let docs: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            serde_norway::from_str::<serde_json::Value>(&text).unwrap_or(serde_json::Value::Null)
        })
        .filter(|d| d["kind"] == "NodeGeneration")
        .collect();
    let mut out = String::new();
    for i in 0..count {
        let mut doc = docs[i % docs.len()].clone();
        let name = format!("{}-{i}", doc["metadata"]["name"].as_str().unwrap_or("ng"));
        doc["metadata"] = serde_json::json!({"name": name});
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&doc).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// Sum of the samples in Prometheus text `text` on the lines `keep` accepts (comments skipped).
fn sum_samples(text: &str, keep: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && keep(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        // Not `sum()`: an empty f64 sum is -0.0, printed as "-0.00".
        .fold(0.0, |total, v| total + v)
}

/// User + system CPU seconds of a process, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, `state`;
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}
