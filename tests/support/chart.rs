//! The Helm chart in a real cluster: releases through Helm's own SDK (no `helm` binary here;
//! tests/python/helm_release.py drives helm-python-sdk), and the chart's ServiceAccount as a
//! kubeconfig, so the operator can run with exactly the identity and configuration the chart
//! gives it.

#![allow(dead_code)] // shared by every test crate that declares `mod support`

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::cluster::Cluster;

pub fn chart_dir() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/omninode-operator"
    ))
    .to_path_buf()
}

/// The Python with helm-python-sdk (`OMNINODE_PYTHON`, set by scripts/test-all.sh); `None`
/// when there is none.
pub fn helm_python() -> Option<String> {
    let python = std::env::var("OMNINODE_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import helm_python.config"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

/// `helm install` or `helm upgrade` of `chart` as `release` in `namespace` with `values`;
/// the release summary Helm returns.
pub fn helm(
    cluster: &Cluster,
    python: &str,
    action: &str,
    namespace: &str,
    release: &str,
    chart: &Path,
    values: &Value,
) -> Result<Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/helm_release.py");
    let out = Command::new(python)
        .args([script, action])
        .arg(&cluster.kubeconfig)
        .args([namespace, release])
        .arg(chart)
        .arg(values.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "helm {action}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("helm {action} output: {e}"))
}

/// A copy of the chart whose Chart.yaml says `version` (for an upgrade from N to N+1).
pub fn chart_with_version(into: &Path, version: &str) -> Result<PathBuf, String> {
    fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy(&entry.path(), &target)?;
            } else {
                std::fs::copy(entry.path(), target)?;
            }
        }
        Ok(())
    }
    let dir = into.join(format!("chart-{version}"));
    copy(&chart_dir(), &dir).map_err(|e| e.to_string())?;
    let meta = dir.join("Chart.yaml");
    let text = std::fs::read_to_string(&meta).map_err(|e| e.to_string())?;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("version:") {
                format!("version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&meta, text).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// A kubeconfig for ServiceAccount `sa` in `namespace`: the cluster's server and CA, and a
/// token from the TokenRequest API (`kubectl create token`), no admin credentials.
pub fn service_account_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    sa: &str,
) -> Result<PathBuf, String> {
    let token = cluster.kubectl_ok(&["create", "token", sa, "-n", namespace, "--duration=1h"])?;
    let admin = cluster.json(&["config", "view", "--raw", "--minify", "--flatten"])?;
    let server = admin["clusters"][0].clone();
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [server],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": sa, "context": {
            "cluster": server["name"], "user": sa, "namespace": namespace}}],
        "current-context": sa,
    });
    let path = cluster
        .dir()
        .join(format!("kubeconfig-{namespace}-{sa}.json"));
    std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
    Ok(path)
}

/// `kubectl auth can-i` as the identity in `kubeconfig`.
pub fn can_i(kubeconfig: &Path, args: &[&str]) -> Result<bool, String> {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(["auth", "can-i"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => Err(format!(
            "kubectl auth can-i {}: {other} {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Environment variables, in order.
pub type Env = Vec<(String, String)>;

/// The operator container's args and environment from the chart's Deployment, as the kubelet
/// would resolve them for a pod named `pod` in `namespace` (field references; `$(VAR)`
/// references to earlier variables). Secret references are refused: the default chart has none.
pub fn container_config(
    deployment: &Value,
    namespace: &str,
    pod: &str,
) -> Result<(Vec<String>, Env), String> {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args = container["args"]
        .as_array()
        .ok_or("the operator container has no args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let mut env: Env = Vec::new();
    for var in container["env"].as_array().cloned().unwrap_or_default() {
        let name = var["name"].as_str().ok_or("env without name")?.to_string();
        let value = if let Some(v) = var["value"].as_str() {
            let mut v = v.to_string();
            for (k, earlier) in &env {
                v = v.replace(&format!("$({k})"), earlier);
            }
            v
        } else if var["valueFrom"].is_null() {
            // The API server drops an empty `value`; the kubelet sets the variable to "".
            String::new()
        } else {
            match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.namespace") => namespace.to_string(),
                Some("metadata.name") => pod.to_string(),
                _ => return Err(format!("cannot resolve env {name}: {}", var["valueFrom"])),
            }
        };
        env.push((name, value));
    }
    Ok((args, env))
}
