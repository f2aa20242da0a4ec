//! A one-node cluster for the real-pod scenarios: containerd (the harness's own configuration
//! and state below a temporary directory), a bridge CNI, the kubelet and the scheduler, next to
//! the control plane of [`Cluster`]. Used when the control plane's binary directory also holds
//! `kubelet` and `kube-scheduler` and the host has containerd, runc and the CNI plugins
//! (`scripts/test-all.sh` installs the Debian packages). The harness only consumes binaries.
//!
//! Tear-down undoes every host change it made, in order: pods deleted through the kubelet (so
//! CNI releases their addresses), the processes it started (by PID) and the container shims of
//! its containerd, mounts below its directory, the bridge, the iptables rules (restored from
//! the dump taken before), the sysctls the kubelet set, and the `kubepods` cgroups.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{Cluster, host_address, run, spawn};

/// The bridge the CNI configuration creates.
const BRIDGE: &str = "omninode0";
/// Pod addresses.
const POD_SUBNET: &str = "10.244.0.0/24";
/// The node's name.
pub const NODE_NAME: &str = "omninode-e2e";
/// The node's taint: only pods of namespaces [`KubeletNode::admit`]ted tolerate it, so the
/// Pending pods other scenarios left behind never land on it.
const TAINT_KEY: &str = "omninode.ai/real-pods";
/// The namespace annotation PodTolerationRestriction gives every new pod of the namespace.
const TOLERATIONS_ANNOTATION: &str = "scheduler.alpha.kubernetes.io/defaultTolerations";
/// The sandbox image the harness builds (busybox `sleep infinity`) and names in containerd.
const PAUSE_IMAGE: &str = "localhost/omninode/pause:1";
/// Sysctls the kubelet (and CNI) set, restored at tear-down.
const SYSCTLS: &[&str] = &[
    "kernel.panic",
    "kernel.panic_on_oops",
    "vm.overcommit_memory",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
];
/// iptables tables restored at tear-down, for IPv4 and IPv6 (the kubelet and kube-proxy make
/// their canary chains in both).
const TABLES: &[&str] = &["filter", "nat", "mangle"];
const IPTABLES: &[(&str, &str)] = &[
    ("iptables-save", "iptables-restore"),
    ("ip6tables-save", "ip6tables-restore"),
];

/// Why real pods cannot run here, or None when they can.
pub fn missing(assets: &Path) -> Option<String> {
    for bin in ["kubelet", "kube-scheduler"] {
        if !assets.join(bin).is_file() {
            return Some(format!("no {bin} in {}", assets.display()));
        }
    }
    for tool in ["containerd", "runc", "ctr", "umoci", "iptables-save", "ip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/usr/lib/cni/bridge").is_file() {
        return Some("no CNI plugins in /usr/lib/cni (containernetworking-plugins)".into());
    }
    if !Path::new("/bin/busybox").is_file() {
        return Some("no /bin/busybox (busybox-static) for the sandbox image".into());
    }
    None
}

pub struct KubeletNode {
    dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
    kubeconfig: PathBuf,
    /// (name, process), in start order.
    processes: Vec<(&'static str, Child)>,
    sysctls: Vec<(String, String)>,
    /// (restore command, table, dump taken before).
    iptables: Vec<(&'static str, &'static str, Vec<u8>)>,
    /// Network namespaces that existed before (containerd makes one per pod sandbox).
    netns: Vec<String>,
    pub address: String,
    /// Whether a kube-proxy runs, so that pods reach Services (the API's included).
    pub proxies_services: bool,
    /// Namespaces [`KubeletNode::admit`]ted: tear-down takes their toleration back, so that
    /// their ReplicaSets' replacement pods never land on a later scenario's node.
    admitted: std::cell::RefCell<Vec<String>>,
}

/// `cmd`'s standard output, when it succeeds.
fn sh(cmd: &mut Command) -> Result<String, String> {
    run(cmd).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl KubeletNode {
    /// Start containerd, the kubelet and the scheduler against `cluster`, import `images` (OCI
    /// archives) and wait until the node is Ready.
    pub fn start(cluster: &Cluster, assets: &Path, images: &[PathBuf]) -> Result<Self, String> {
        let tmp = tempfile::Builder::new()
            .prefix("omninode-kubelet-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = tmp.path().to_path_buf();
        let mut node = KubeletNode {
            dir: d.clone(),
            tmp: Some(tmp),
            kubeconfig: cluster.kubeconfig.clone(),
            processes: Vec::new(),
            sysctls: Vec::new(),
            iptables: Vec::new(),
            netns: network_namespaces(),
            address: host_address()?,
            proxies_services: false,
            admitted: Default::default(),
        };
        // What tear-down restores.
        for key in SYSCTLS {
            let value = sh(Command::new("sysctl").args(["-n", key]))?;
            node.sysctls
                .push((key.to_string(), value.trim().to_string()));
        }
        for (save, restore) in IPTABLES {
            for table in TABLES {
                let dump = Command::new(save)
                    .args(["-t", table])
                    .output()
                    .map_err(|e| e.to_string())?;
                node.iptables.push((restore, table, dump.stdout));
            }
        }
        node.write_configs(cluster)?;
        let p = |f: &str| d.join(f).display().to_string();
        node.processes.push((
            "containerd",
            spawn(
                Path::new("containerd"),
                &["--config".into(), p("containerd/config.toml")],
                &d.join("containerd.log"),
            )?,
        ));
        node.wait_for(Duration::from_secs(20), "containerd", || {
            Ok(d.join("containerd/containerd.sock").exists())
        })?;
        let pause = node.pause_image()?;
        for image in std::iter::once(&pause).chain(images) {
            node.import(image)?;
        }
        node.processes.push((
            "kubelet",
            spawn(
                &assets.join("kubelet"),
                &[
                    format!("--config={}", p("kubelet.yaml")),
                    format!("--kubeconfig={}", cluster.kubeconfig.display()),
                    format!("--root-dir={}", p("kubelet")),
                    format!("--node-ip={}", node.address),
                    format!("--hostname-override={NODE_NAME}"),
                ],
                &d.join("kubelet.log"),
            )?,
        ));
        node.processes.push((
            "kube-scheduler",
            spawn(
                &assets.join("kube-scheduler"),
                &[
                    format!("--kubeconfig={}", cluster.kubeconfig.display()),
                    "--leader-elect=false".into(),
                    "--bind-address=127.0.0.1".into(),
                    "--secure-port=0".into(),
                ],
                &d.join("kube-scheduler.log"),
            )?,
        ));
        // Services for pods, when the API server serves them on the host's address: kube-proxy
        // leads the `kubernetes` Service's address there.
        let proxy = assets.join("kube-proxy");
        if proxy.is_file() && cluster.pod_api_address.is_some() {
            node.processes.push((
                "kube-proxy",
                spawn(
                    &proxy,
                    &[format!("--config={}", p("kube-proxy.yaml"))],
                    &d.join("kube-proxy.log"),
                )?,
            ));
            node.proxies_services = true;
        }
        node.wait_for(Duration::from_secs(60), "the node to be Ready", || {
            let ready = cluster
                .kubectl(&[
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&ready.stdout).trim() == "True")
        })?;
        Ok(node)
    }

    fn write_configs(&self, cluster: &Cluster) -> Result<(), String> {
        let d = &self.dir;
        let write = |path: &str, text: String| {
            let path = d.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
        };
        let dir = d.display();
        write(
            "containerd/config.toml",
            format!(
                r#"version = 2
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
[grpc]
  address = "{dir}/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # No process here may lower oom_score_adj (no CAP_SYS_RESOURCE): without this every
  # sandbox fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{dir}/cni"
"#
            ),
        )?;
        write(
            "cni/10-omninode.conflist",
            format!(
                r#"{{"cniVersion": "0.4.0", "name": "omninode", "plugins": [
  {{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{POD_SUBNET}"}}]],
            "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{dir}/cni-ipam"}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
]}}
"#
            ),
        )?;
        let ca = cluster.dir().join("ca.crt");
        write(
            "kubelet.yaml",
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host runs cgroup v1 and has swap accounting off.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
containerRuntimeEndpoint: unix://{dir}/containerd/containerd.sock
podLogsDir: {dir}/pod-logs
resolvConf: ""
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
readOnlyPort: 0
serializeImagePulls: false
registerWithTaints:
- {{key: {TAINT_KEY}, value: "true", effect: NoSchedule}}
"#,
                ca = ca.display()
            ),
        )?;
        // Zero conntrack settings: kube-proxy leaves the host's conntrack sysctls alone.
        write(
            "kube-proxy.yaml",
            format!(
                r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {kubeconfig}}}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_SUBNET}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"#,
                kubeconfig = cluster.kubeconfig.display(),
                healthz = super::cluster::free_port(),
                metrics = super::cluster::free_port(),
            ),
        )
    }

    /// The sandbox ("pause") image: busybox-static running `sleep infinity`, packed by umoci.
    fn pause_image(&self) -> Result<PathBuf, String> {
        let layout = self.dir.join("oci-pause");
        let layout_s = layout.display().to_string();
        let image = format!("{layout_s}:1");
        let bundle = self.dir.join("pause-bundle");
        sh(Command::new("umoci").args(["init", "--layout", &layout_s]))?;
        sh(Command::new("umoci").args(["new", "--image", &image]))?;
        sh(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle))?;
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
        std::fs::copy("/bin/busybox", bin.join("busybox")).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink("busybox", bin.join("sleep")).map_err(|e| e.to_string())?;
        sh(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle))?;
        sh(Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--config.cmd",
            "/bin/sleep",
            "--config.cmd",
            "infinity",
        ]))?;
        let archive = self.dir.join("pause.tar");
        sh(Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .arg("."))?;
        Ok(archive)
    }

    /// Let namespace `ns`'s pods onto the node: its pods get the toleration of the node's taint
    /// (by the PodTolerationRestriction admission plugin). Call before they are created.
    ///
    /// The OpenShift-flavoured API server also puts an `openshift-service-ca.crt` ConfigMap into
    /// every service-account token volume; nothing here publishes it, so it is created (empty)
    /// for pods that mount a token (the chart's operator).
    pub fn admit(&self, cluster: &Cluster, ns: &str) -> Result<(), String> {
        cluster.kubectl_ok(&[
            "create",
            "configmap",
            "openshift-service-ca.crt",
            "-n",
            ns,
            "--from-literal=service-ca.crt=",
        ])?;
        let tolerations =
            format!(r#"[{{"key": "{TAINT_KEY}", "operator": "Exists", "effect": "NoSchedule"}}]"#);
        cluster.kubectl_ok(&[
            "annotate",
            "namespace",
            ns,
            "--overwrite",
            &format!("{TOLERATIONS_ANNOTATION}={tolerations}"),
        ])?;
        self.admitted.borrow_mut().push(ns.to_string());
        Ok(())
    }

    /// What container `container` of `pod` (a Pod as JSON) wrote, every run of it: the files
    /// the kubelet keeps (`kubectl logs` would need a kubelet serving certificate).
    pub fn container_log(
        &self,
        ns: &str,
        pod: &serde_json::Value,
        container: &str,
    ) -> Result<String, String> {
        let meta = &pod["metadata"];
        let dir = self.dir.join("pod-logs").join(format!(
            "{ns}_{}_{}",
            meta["name"].as_str().unwrap_or_default(),
            meta["uid"].as_str().unwrap_or_default()
        ));
        let dir = dir.join(container);
        let mut runs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        runs.sort();
        let mut log = String::new();
        for run in runs {
            log += &std::fs::read_to_string(&run).map_err(|e| format!("{}: {e}", run.display()))?;
        }
        Ok(log)
    }

    /// `ctr images import` into the kubelet's namespace; a tag-only archive is named after the
    /// pause image's repository.
    pub fn import(&self, archive: &Path) -> Result<(), String> {
        let socket = self.dir.join("containerd/containerd.sock");
        sh(Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .args([
                "-n",
                "k8s.io",
                "images",
                "import",
                "--base-name",
                "localhost/omninode/pause",
            ])
            .arg(archive))
        .map(|_| ())
    }

    fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut() -> Result<bool, String>,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if done()? {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "waited {timeout:?} for {what}; logs in {}",
                    self.dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Keep the logs after tear-down (for a failed run).
    pub fn keep_logs(&mut self) -> PathBuf {
        if let Some(tmp) = self.tmp.take() {
            let _ = tmp.keep();
        }
        self.dir.clone()
    }

    fn kubectl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn tear_down(&mut self) {
        // Pods first, through the kubelet, so CNI releases their addresses and veths; the node
        // is cordoned and the namespaces lose their toleration, so that their ReplicaSets'
        // replacements stay Pending here and on any later node.
        let _ = self.kubectl(&["cordon", NODE_NAME]);
        for ns in self.admitted.borrow().iter() {
            let _ = self.kubectl(&[
                "annotate",
                "namespace",
                ns,
                &format!("{TOLERATIONS_ANNOTATION}-"),
            ]);
        }
        let _ = self.kubectl(&[
            "delete",
            "pods",
            "--all",
            "--all-namespaces",
            "--grace-period=1",
            "--wait=false",
        ]);
        let on_node = format!("spec.nodeName={NODE_NAME}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let left = self
                .kubectl(&[
                    "get",
                    "pods",
                    "-A",
                    "-o",
                    "name",
                    "--field-selector",
                    &on_node,
                ])
                .unwrap_or_default();
            if left.trim().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = self.kubectl(&["delete", "node", NODE_NAME, "--wait=false"]);
        for (_, child) in self.processes.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims of this containerd outlive it; they name its directory on their command line.
        let _ = Command::new("pkill")
            .args([
                "-9",
                "-f",
                &format!("containerd-shim.*{}", self.dir.display()),
            ])
            .status();
        std::thread::sleep(Duration::from_millis(300));
        // Mounts below the directory, deepest first.
        let dir = self.dir.display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &mounts {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = Command::new("ip").args(["link", "delete", BRIDGE]).status();
        for (restore, table, dump) in &self.iptables {
            if let Ok(mut child) = Command::new(restore)
                .args(["-T", table])
                .stdin(Stdio::piped())
                .spawn()
            {
                if let Some(mut stdin) = child.stdin.take() {
                    use std::io::Write;
                    let _ = stdin.write_all(dump);
                }
                let _ = child.wait();
            }
        }
        for (key, value) in &self.sysctls {
            let _ = Command::new("sysctl")
                .args(["-q", "-w", &format!("{key}={value}")])
                .status();
        }
        // Whatever still runs in a pod's cgroup (a pod the kubelet did not stop in time).
        kill_cgroup_members("kubepods");
        remove_cgroups("kubepods");
        for ns in network_namespaces() {
            if !self.netns.contains(&ns) {
                let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
            }
        }
    }
}

/// The named network namespaces (`ip netns list`).
fn network_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    })
    .unwrap_or_default()
}

/// SIGKILL every process in the cgroup `name` (and below) of any v1 hierarchy.
fn kill_cgroup_members(name: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut pids = std::collections::BTreeSet::new();
    for h in hierarchies.flatten() {
        let mut dirs = Vec::new();
        let root = h.path().join(name);
        if root.is_dir() {
            collect_dirs(&root, &mut dirs);
        }
        for d in dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    for pid in &pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    if !pids.is_empty() {
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Remove the cgroup `name` (and what is below it) in every v1 hierarchy, deepest first.
fn remove_cgroups(name: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let root = h.path().join(name);
        if root.is_dir() {
            let mut dirs = Vec::new();
            collect_dirs(&root, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        self.tear_down();
    }
}
