//! GeneratedNode → Deployment (+ Service): the node's code mounted from its ConfigMap (or fetched
//! from Git), `python -m` as the entry point, probes on its own health server, and the restricted
//! Pod Security profile. The pod template carries the content hash so new code rolls the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{GeneratedNode, GeneratedNodeSpec, LABEL_MANAGED_BY, LABEL_NODE};
use crate::publish::configmap::CONTENT_HASH_ANNOTATION;

/// Where the node directory is mounted in the container.
pub const CODE_DIR: &str = "/opt/node";
/// The unprivileged user the node runs as.
const RUN_AS: i64 = 10001;

/// Settings of the operator that apply to every node it deploys.
#[derive(Clone, Debug)]
pub struct DeployDefaults {
    pub image: String,
    /// The `omninode-runtime` version `image` carries.
    pub image_runtime_version: String,
    pub kafka_bootstrap_servers: Option<String>,
    /// Image of the init container that fetches code from Git (needs `git` and `tar`).
    pub git_image: String,
}

/// Where a node's Deployment gets its code.
#[derive(Clone, Debug, PartialEq)]
pub enum Code {
    /// A ConfigMap whose keys are the node's file paths with `/` written as `-`: mounted whole
    /// and laid out by the runtime at start-up (`omninode_runtime.launch`), so the pod template
    /// (copied into every ReplicaSet and Pod) carries no per-file list.
    ConfigMap { name: String },
    /// A directory of a Git revision, fetched by an init container into an emptyDir, with the
    /// package directory `shared_path` of the same revision beside it when set.
    Git {
        repository: String,
        revision: String,
        path: String,
        shared_path: Option<String>,
    },
}

/// What the fetch init container runs: a shallow fetch of exactly the revision, and the node's
/// directory of it unpacked (modes kept) where the node container mounts its code, with the
/// shared package (when there is one) as a package directory beside the node's.
const FETCH_SCRIPT: &str = r#"set -eu
rm -rf "$HOME/src.git"
git init -q --bare "$HOME/src.git"
git --git-dir="$HOME/src.git" fetch -q --depth=1 "$REPOSITORY" "$REVISION"
git --git-dir="$HOME/src.git" archive --format=tar "FETCH_HEAD:$SOURCE_PATH" | tar -x -C "$CODE_DIR"
if [ -n "${SHARED_PATH:-}" ]; then
  mkdir -p "$CODE_DIR/${SHARED_PATH##*/}"
  git --git-dir="$HOME/src.git" archive --format=tar "FETCH_HEAD:$SHARED_PATH" | tar -x -C "$CODE_DIR/${SHARED_PATH##*/}"
fi
echo "fetched $SOURCE_PATH of $REPOSITORY at $(git --git-dir="$HOME/src.git" rev-parse FETCH_HEAD) ($REVISION)"
rm -rf "$HOME/src.git"
"#;

/// CPU and memory requests and a memory limit (no CPU limit: throttling hurts probes).
fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(memory_limit.into()),
        )])),
        ..Default::default()
    }
}

/// The code volume at `CODE_DIR` and a writable `/tmp` (the root filesystem is read-only).
fn mounts(code_read_only: bool) -> Vec<VolumeMount> {
    vec![
        VolumeMount {
            name: "code".into(),
            mount_path: CODE_DIR.into(),
            read_only: code_read_only.then_some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ]
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The init container that puts a Git revision's node directory into the code volume.
fn fetch_container(
    image: &str,
    repository: &str,
    revision: &str,
    path: &str,
    shared_path: Option<&str>,
) -> Container {
    let mut vars = vec![
        env("REPOSITORY", repository),
        env("REVISION", revision),
        env("SOURCE_PATH", path.trim_matches('/')),
    ];
    if let Some(shared) = shared_path {
        vars.push(env("SHARED_PATH", shared.trim_matches('/')));
    }
    vars.extend([
        env("CODE_DIR", CODE_DIR),
        env("HOME", "/tmp"),
        env("GIT_TERMINAL_PROMPT", "0"),
    ]);
    Container {
        name: "fetch-code".into(),
        image: Some(image.to_string()),
        command: Some(vec!["sh".into(), "-c".into(), FETCH_SCRIPT.into()]),
        env: Some(vars),
        resources: Some(resources("10m", "32Mi", "128Mi")),
        security_context: Some(restricted_container_context()),
        // The fetcher writes the code volume; the node only reads it.
        volume_mounts: Some(mounts(false)),
        ..Default::default()
    }
}

/// Labels that select a node's pods.
fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        (
            LABEL_MANAGED_BY.to_string(),
            "omninode-operator".to_string(),
        ),
    ])
}

/// The Python package of a node, which `python -m` starts: `node_<domain>_<service>_<type>`, as
/// the operator generates it (a hand-written GeneratedNode's code follows the same layout).
pub fn package(spec: &GeneratedNodeSpec) -> String {
    format!(
        "node_{}_{}_{}",
        spec.domain,
        spec.service_name,
        spec.node_type.as_str()
    )
}

/// The file that makes the package startable: what a code source must hold.
pub fn entry_file(spec: &GeneratedNodeSpec) -> String {
    format!("{}/__main__.py", package(spec))
}

/// The node's command: `python -m <package>` on a Git checkout; on a ConfigMap's flat files the
/// runtime's launcher first lays the package out below `/tmp`.
fn command(spec: &GeneratedNodeSpec, code: &Code) -> Vec<String> {
    let mut command: Vec<String> = match code {
        Code::ConfigMap { .. } => vec![
            "python".into(),
            "-m".into(),
            "omninode_runtime.launch".into(),
            CODE_DIR.into(),
            package(spec),
        ],
        Code::Git { .. } => vec!["python".into(), "-m".into(), package(spec)],
    };
    command.extend([
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        spec.deploy.port.to_string(),
    ]);
    command
}

fn probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn restricted_container_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// The Deployment of a GeneratedNode whose code is at `code`.
pub fn deployment(
    gn: &GeneratedNode,
    code: Code,
    labels: BTreeMap<String, String>,
    defaults: &DeployDefaults,
) -> Deployment {
    let name = gn.metadata.name.clone().unwrap_or_default();
    let spec = &gn.spec;
    let port = spec.deploy.port;
    let mut env = vec![
        // The node's package is below the code directory; the runtime is in the image.
        EnvVar {
            name: "PYTHONPATH".into(),
            value: Some(CODE_DIR.into()),
            ..Default::default()
        },
        EnvVar {
            name: "POD_NAMESPACE".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.namespace".into(),
                    api_version: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        EnvVar {
            name: "PYTHONDONTWRITEBYTECODE".into(),
            value: Some("1".into()),
            ..Default::default()
        },
        EnvVar {
            name: "PYTHONUNBUFFERED".into(),
            value: Some("1".into()),
            ..Default::default()
        },
    ];
    if let Some(servers) = &defaults.kafka_bootstrap_servers {
        env.push(EnvVar {
            name: "KAFKA_BOOTSTRAP_SERVERS".into(),
            value: Some(servers.clone()),
            ..Default::default()
        });
    }
    // The trace of the generation that made this node, which the node continues.
    if let Some(parent) = gn
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::api::ANNOTATION_TRACEPARENT))
    {
        env.push(EnvVar {
            name: "TRACEPARENT".into(),
            value: Some(parent.clone()),
            ..Default::default()
        });
    }
    env.extend(spec.deploy.env.iter().cloned());
    let resources = spec
        .deploy
        .resources
        .as_deref()
        .cloned()
        .unwrap_or_else(|| resources("50m", "64Mi", "256Mi"));
    let mut pod_labels = labels.clone();
    pod_labels.extend(selector(&name));
    let container = Container {
        name: "node".into(),
        image: Some(
            spec.deploy
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        command: Some(command(spec, &code)),
        working_dir: Some(CODE_DIR.into()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: port,
            ..Default::default()
        }]),
        startup_probe: Some(probe("/health/live", port, 2, 30)),
        liveness_probe: Some(probe("/health/live", port, 10, 3)),
        readiness_probe: Some(probe("/health/ready", port, 5, 3)),
        resources: Some(resources),
        security_context: Some(restricted_container_context()),
        volume_mounts: Some(mounts(true)),
        ..Default::default()
    };
    let (code_volume, init_containers) = match code {
        Code::ConfigMap { name } => (
            Volume {
                name: "code".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name,
                    default_mode: Some(0o644),
                    ..Default::default()
                }),
                ..Default::default()
            },
            None,
        ),
        Code::Git {
            repository,
            revision,
            path,
            shared_path,
        } => (
            Volume {
                name: "code".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
            Some(vec![fetch_container(
                &defaults.git_image,
                &repository,
                &revision,
                &path,
                shared_path.as_deref(),
            )]),
        ),
    };
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: gn.metadata.namespace.clone(),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(spec.deploy.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(&name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONTENT_HASH_ANNOTATION.to_string(),
                        spec.content_hash.clone(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    termination_grace_period_seconds: Some(15),
                    init_containers,
                    volumes: Some(vec![
                        code_volume,
                        Volume {
                            name: "tmp".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Service in front of a node's health and metrics port.
pub fn service(gn: &GeneratedNode, labels: BTreeMap<String, String>) -> Service {
    let name = gn.metadata.name.clone().unwrap_or_default();
    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: gn.metadata.namespace.clone(),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: gn.spec.deploy.port,
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The labels of a node's children (never copying Argo CD tracking labels).
pub fn child_labels(gn: &GeneratedNode) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (
            LABEL_MANAGED_BY.to_string(),
            "omninode-operator".to_string(),
        ),
        (
            LABEL_NODE.to_string(),
            gn.spec.service_name.replace('_', "-"),
        ),
    ]);
    if let Some(generation) = gn
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::api::LABEL_GENERATION))
    {
        labels.insert(crate::api::LABEL_GENERATION.to_string(), generation.clone());
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        ConfigMapSource, GeneratedNodeDeploy, GeneratedNodeSpec, NodeSource, NodeType,
    };

    fn gn() -> GeneratedNode {
        let mut gn = GeneratedNode::new(
            "orders-writer-effect",
            GeneratedNodeSpec {
                node_type: NodeType::Effect,
                domain: "data".into(),
                service_name: "order_writer".into(),
                version: "1.0.0".into(),
                source: NodeSource {
                    config_map: Some(ConfigMapSource {
                        name: "orders-writer-effect-code".into(),
                    }),
                    git: None,
                },
                content_hash: "abc123".into(),
                deploy: GeneratedNodeDeploy::default(),
                depends_on: Vec::new(),
                runtime: None,
            },
        );
        gn.metadata.namespace = Some("ns".into());
        gn.metadata.labels = Some(BTreeMap::from([
            (
                crate::api::LABEL_GENERATION.to_string(),
                "orders".to_string(),
            ),
            ("argocd.argoproj.io/instance".to_string(), "app".to_string()),
            ("app.kubernetes.io/instance".to_string(), "app".to_string()),
        ]));
        gn
    }

    fn defaults() -> DeployDefaults {
        DeployDefaults {
            image: "runtime:1".into(),
            image_runtime_version: "0.1.0".into(),
            kafka_bootstrap_servers: Some("kafka:9092".into()),
            git_image: "git:1".into(),
        }
    }

    #[test]
    fn a_git_source_is_fetched_by_a_restricted_init_container_into_an_empty_dir() {
        let gn = gn();
        let git = |revision: &str| {
            deployment(
                &gn,
                Code::Git {
                    repository: "https://git.example/nodes.git".into(),
                    revision: revision.into(),
                    path: "/clusters/dev/ns/g/nodes/n/".into(),
                    shared_path: None,
                },
                child_labels(&gn),
                &defaults(),
            )
        };
        let d = git("omninode/n/abc");
        let pod = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
        let init = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.image.as_deref(), Some("git:1"));
        let env: BTreeMap<_, _> = init
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["REVISION"], "omninode/n/abc");
        assert_eq!(env["SOURCE_PATH"], "clusters/dev/ns/g/nodes/n");
        assert_eq!(init.security_context, Some(restricted_container_context()));
        let code = &pod.volumes.as_ref().unwrap()[0];
        assert!(code.empty_dir.is_some() && code.config_map.is_none());
        // Another revision is another pod template: the pods roll.
        assert_ne!(
            d.spec.unwrap().template,
            git("omninode/n/def").spec.unwrap().template
        );
    }

    /// The init container's script, run by `sh` against a real Git repository: the node's
    /// directory and the shared package end up side by side in the code directory.
    #[test]
    fn the_fetch_script_puts_the_node_and_its_shared_package_side_by_side() {
        let work = tempfile::tempdir().unwrap();
        let repo = work.path().join("repo");
        let code = work.path().join("code");
        std::fs::create_dir_all(repo.join("g/nodes/n/pkg")).unwrap();
        std::fs::create_dir_all(repo.join("g/shared/sys_shared/sys_shared")).unwrap();
        std::fs::create_dir_all(&code).unwrap();
        std::fs::write(repo.join("g/nodes/n/pkg/__main__.py"), "print(1)\n").unwrap();
        std::fs::write(repo.join("g/nodes/n/pyproject.toml"), "node\n").unwrap();
        std::fs::write(repo.join("g/shared/sys_shared/pyproject.toml"), "shared\n").unwrap();
        std::fs::write(repo.join("g/shared/sys_shared/sys_shared/__init__.py"), "").unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
                .arg(&repo)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "x"]);
        git(&["tag", "omninode/n/abc"]);
        let out = std::process::Command::new("sh")
            .args(["-c", FETCH_SCRIPT])
            .env("REPOSITORY", &repo)
            .env("REVISION", "omninode/n/abc")
            .env("SOURCE_PATH", "g/nodes/n")
            .env("SHARED_PATH", "g/shared/sys_shared/sys_shared")
            .env("CODE_DIR", &code)
            .env("HOME", work.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(code.join("pkg/__main__.py").is_file());
        assert!(code.join("sys_shared/__init__.py").is_file());
        // The node's packaging, not the shared distribution's.
        assert_eq!(
            std::fs::read_to_string(code.join("pyproject.toml")).unwrap(),
            "node\n"
        );
    }

    /// Argo CD marks what it applies (a committed GeneratedNode) with tracking labels and
    /// annotations; copying them onto children would make Argo CD prune or adopt those.
    #[test]
    fn argo_cd_tracking_metadata_never_reaches_children() {
        let mut gn = gn();
        gn.metadata.labels = Some(BTreeMap::from([
            (
                "app.kubernetes.io/instance".to_string(),
                "nodes-app".to_string(),
            ),
            (
                "argocd.argoproj.io/instance".to_string(),
                "nodes-app".to_string(),
            ),
            (
                crate::api::LABEL_GENERATION.to_string(),
                "orders".to_string(),
            ),
        ]));
        gn.metadata.annotations = Some(BTreeMap::from([(
            "argocd.argoproj.io/tracking-id".to_string(),
            "nodes-app:codegen.omninode.ai/GeneratedNode:ns/x".to_string(),
        )]));
        let code = Code::ConfigMap {
            name: "x-code".into(),
        };
        let d = deployment(&gn, code, child_labels(&gn), &defaults());
        let svc = service(&gn, child_labels(&gn));
        let template = d.spec.as_ref().unwrap().template.metadata.clone().unwrap();
        for meta in [&d.metadata, &svc.metadata, &template] {
            let text = serde_json::to_string(meta).unwrap();
            assert!(!text.contains("app.kubernetes.io/instance"), "{text}");
            assert!(!text.contains("argocd.argoproj.io"), "{text}");
            assert!(
                text.contains("\"codegen.omninode.ai/generation\":\"orders\""),
                "{text}"
            );
        }
    }

    #[test]
    fn deployment_runs_the_start_script_restricted_with_probes() {
        let gn = gn();
        let d = deployment(
            &gn,
            Code::ConfigMap {
                name: "orders-writer-effect-code".into(),
            },
            child_labels(&gn),
            &defaults(),
        );
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.command.as_ref().unwrap()[..5],
            [
                "python",
                "-m",
                "omninode_runtime.launch",
                CODE_DIR,
                &package(&gn.spec)
            ]
        );
        assert_eq!(c.image.as_deref(), Some("runtime:1"));
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/health/ready")
        );
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/health/live")
        );
        assert!(c.startup_probe.is_some());
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            (
                sc.run_as_non_root,
                sc.allow_privilege_escalation,
                sc.read_only_root_filesystem
            ),
            (Some(true), Some(false), Some(true))
        );
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert!(
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name == "KAFKA_BOOTSTRAP_SERVERS")
        );
        let annotations = d
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(annotations[CONTENT_HASH_ANNOTATION], "abc123");
        let volume = pod.volumes.as_ref().unwrap()[0]
            .config_map
            .as_ref()
            .unwrap();
        assert_eq!(volume.name, "orders-writer-effect-code");
        assert!(
            volume.items.is_none(),
            "no per-file list in the pod template"
        );
        let labels = d.metadata.labels.as_ref().unwrap();
        assert!(
            labels
                .keys()
                .all(|k| !k.starts_with("argocd.argoproj.io") && k != "app.kubernetes.io/instance")
        );
        assert_eq!(labels[crate::api::LABEL_GENERATION], "orders");
        assert_eq!(labels[LABEL_NODE], "order-writer");
    }

    #[test]
    fn service_targets_the_named_port() {
        let gn = gn();
        let s = service(&gn, child_labels(&gn));
        let spec = s.spec.unwrap();
        assert_eq!(spec.ports.unwrap()[0].port, 8080);
        assert_eq!(
            spec.selector.unwrap()["app.kubernetes.io/name"],
            "orders-writer-effect"
        );
    }
}
