//! The offline `generate` command: manifests in, node directories and the status each
//! NodeGeneration would get out. No cluster, no broker.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::analysis;
use crate::api::{
    Condition, ConditionStatus, IntelligenceMode, NodeGenerationSpec, NodeGenerationStatus,
    NodeType,
};
use crate::intelligence::wire::SessionStatus;
use crate::intelligence::{IntelligenceClient, advisor};
use crate::manifest::{self, Entry, Rejected};
use crate::pipeline::{self, Outcome};
use crate::prd;
use crate::quality::QualityReport;
use crate::render::{RenderedNode, Renderer};
use crate::status::{self, ANALYZED, PUBLISHED, READY};

/// What `generate` prints for one NodeGeneration.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Printed {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: PrintedMeta,
    pub status: NodeGenerationStatus,
    pub report: PrintedReport,
}

#[derive(Serialize, Debug, Clone)]
pub struct PrintedMeta {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct PrintedReport {
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<String>,
    pub nodes: Vec<PrintedNode>,
}

#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct PrintedNode {
    pub name: String,
    pub directory: String,
    pub content_hash: String,
    pub quality: QualityReport,
}

impl Printed {
    fn new(
        name: String,
        namespace: Option<String>,
        status: NodeGenerationStatus,
        report: PrintedReport,
    ) -> Self {
        Printed {
            api_version: "codegen.omninode.ai/v1alpha1",
            kind: "NodeGeneration",
            metadata: PrintedMeta { name, namespace },
            status,
            report,
        }
    }

    pub fn ready(&self) -> bool {
        status::get(&self.status.conditions, READY).is_some_and(Condition::is_true)
    }
}

/// Run `generate` over input files; returns what to print, in input order.
pub async fn generate(
    renderer: &Renderer,
    inputs: &[PathBuf],
    output: &Path,
    client: Option<&IntelligenceClient>,
) -> Vec<Printed> {
    let mut printed = Vec::new();
    let mut seen = BTreeSet::new();
    for input in inputs {
        let source = input.display().to_string();
        let entries = match std::fs::read(input) {
            Ok(bytes) => manifest::read_input(&source, &bytes),
            Err(e) => vec![Entry::Rejected {
                name: manifest::name_from_path(&source),
                rejected: Rejected {
                    reason: "InputUnreadable".into(),
                    message: format!("{source}: {e}"),
                },
            }],
        };
        for entry in entries {
            let p = match entry {
                Entry::Rejected { name, rejected } => rejected_doc(&source, name, None, rejected),
                Entry::Generation {
                    name,
                    namespace,
                    spec,
                    prd,
                } => {
                    if !seen.insert((namespace.clone(), name.clone())) {
                        let r = Rejected {
                            reason: "DuplicateName".into(),
                            message: format!("another input already defines NodeGeneration {name}"),
                        };
                        rejected_doc(&source, name, namespace, r)
                    } else {
                        match prd {
                            Err(r) => rejected_doc(&source, name, namespace, r),
                            Ok(prd) => {
                                let ns = namespace.clone().unwrap_or_default();
                                match run_one(renderer, &ns, &name, &spec, &prd, client).await {
                                    Ok(outcome) => {
                                        finish(&source, name, namespace, outcome, output)
                                    }
                                    Err(r) => rejected_doc(&source, name, namespace, r),
                                }
                            }
                        }
                    }
                }
            };
            printed.push(p);
        }
    }
    printed
}

/// One generation: ask the intelligence service when one is configured (falling back to the
/// built-in library unless `intelligence.mode: Required`), run the core, and add the service's
/// quality scores.
async fn run_one(
    renderer: &Renderer,
    namespace: &str,
    name: &str,
    spec: &NodeGenerationSpec,
    prd_text: &str,
    client: Option<&IntelligenceClient>,
) -> Result<Outcome, Rejected> {
    let id = pipeline::correlation_id(namespace, name, 0, spec);
    let mode = spec.intelligence.mode;
    let client = client.filter(|_| mode != IntelligenceMode::Disabled);
    if client.is_none() && mode == IntelligenceMode::Required {
        return Err(Rejected {
            reason: "IntelligenceUnavailable".into(),
            message:
                "spec.intelligence.mode is Required but no Kafka bootstrap servers are configured"
                    .into(),
        });
    }
    // Offline there is no UID: the session id is derived from the object's identity.
    let session = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("{namespace}/{name}").as_bytes(),
    )
    .to_string();
    let timeout = std::time::Duration::from_secs(spec.intelligence.timeout_seconds.into());
    let mut hints = None;
    let mut fallback = None;
    if let (Some(c), Ok(parsed)) = (client, prd::parse(prd_text)) {
        c.publish_status(
            &session,
            SessionStatus::Processing,
            10.0,
            "analyzing the PRD",
        )
        .await;
        let builtin = analysis::plan(&parsed, &pipeline::overrides(spec, name), None)
            .ok()
            .and_then(|p| p.nodes.first().map(|n| n.node_type))
            .unwrap_or(NodeType::Effect);
        match advisor::advise(c, &session, prd_text, &parsed, builtin, timeout).await {
            Ok(h) => hints = Some(h),
            Err(e) if mode == IntelligenceMode::Required => {
                c.publish_status(&session, SessionStatus::Failed, 100.0, &e.to_string())
                    .await;
                return Err(Rejected {
                    reason: "IntelligenceUnavailable".into(),
                    message: format!("spec.intelligence.mode is Required: {e}"),
                });
            }
            Err(e) => fallback = Some(e.to_string()),
        }
    }
    let mut outcome = pipeline::run(renderer, name, spec, prd_text, id, hints.as_ref());
    if let Some(why) = &fallback {
        outcome.note_fallback(why);
    }
    if let Some(c) = client {
        if hints.is_some() && outcome.succeeded() {
            let scores = futures::future::join_all(outcome.nodes.iter().map(|n| {
                let path = format!(
                    "{}/{}/node.py",
                    n.rendered.dir_name, n.rendered.context.version_dir
                );
                let code = n
                    .rendered
                    .files
                    .get(&format!("{}/node.py", n.rendered.context.version_dir));
                let code = code
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                async move { advisor::assess(c, &path, &code).await }
            }))
            .await;
            for (node, score) in outcome.nodes.iter_mut().zip(scores) {
                if let Ok(score) = score {
                    node.report.merge_service(score);
                }
            }
        }
        let (status, message) = match &outcome.failure {
            None => (
                SessionStatus::Completed,
                format!("{} node(s) generated", outcome.nodes.len()),
            ),
            Some(f) => (SessionStatus::Failed, f.message.clone()),
        };
        c.publish_status(&session, status, 100.0, &message).await;
    }
    Ok(outcome)
}

fn rejected_doc(source: &str, name: String, namespace: Option<String>, r: Rejected) -> Printed {
    let mut status = NodeGenerationStatus::default();
    status::set_condition(
        &mut status.conditions,
        Condition::new(
            ANALYZED,
            ConditionStatus::False,
            &r.reason,
            r.message.clone(),
        ),
        None,
    );
    status::set_condition(
        &mut status.conditions,
        Condition::new(READY, ConditionStatus::False, &r.reason, r.message),
        None,
    );
    status.phase = Some(status::phase(&status.conditions));
    Printed::new(
        name,
        namespace,
        status,
        PrintedReport {
            source: source.to_string(),
            output_dir: None,
            nodes: Vec::new(),
        },
    )
}

fn finish(
    source: &str,
    name: String,
    namespace: Option<String>,
    outcome: Outcome,
    output: &Path,
) -> Printed {
    let mut status = NodeGenerationStatus::default();
    for c in &outcome.conditions {
        status::set_condition(&mut status.conditions, c.clone(), None);
    }
    outcome.fill_status(&mut status);
    let target = output.join(&name);
    let mut output_dir = None;
    match &outcome.failure {
        Some(f) => {
            status::set_condition(
                &mut status.conditions,
                Condition::new(READY, ConditionStatus::False, &f.reason, f.message.clone()),
                None,
            );
        }
        None => {
            let nodes: Vec<&RenderedNode> = outcome.nodes.iter().map(|n| &n.rendered).collect();
            match write_atomically(&target, &nodes) {
                Ok(()) => {
                    output_dir = Some(target.display().to_string());
                    let msg = format!("{} node(s) written to {}", nodes.len(), target.display());
                    status::set_condition(
                        &mut status.conditions,
                        Condition::new(PUBLISHED, ConditionStatus::True, "WrittenToDirectory", msg),
                        None,
                    );
                    let lowest = status.quality.unwrap_or(0.0);
                    let msg = format!(
                        "{} node(s) generated; lowest quality {lowest:.3}",
                        nodes.len()
                    );
                    status::set_condition(
                        &mut status.conditions,
                        Condition::new(READY, ConditionStatus::True, "GenerationSucceeded", msg),
                        None,
                    );
                }
                Err(e) => {
                    let msg = format!("writing {} failed: {e}", target.display());
                    status::set_condition(
                        &mut status.conditions,
                        Condition::new(
                            PUBLISHED,
                            ConditionStatus::False,
                            "WriteFailed",
                            msg.clone(),
                        ),
                        None,
                    );
                    status::set_condition(
                        &mut status.conditions,
                        Condition::new(READY, ConditionStatus::False, "WriteFailed", msg),
                        None,
                    );
                }
            }
        }
    }
    status::sort(&mut status.conditions);
    status.phase = Some(status::phase(&status.conditions));
    let nodes = outcome
        .nodes
        .iter()
        .map(|n| PrintedNode {
            name: n.name.clone(),
            directory: n.rendered.dir_name.clone(),
            content_hash: n.rendered.content_hash.clone(),
            quality: n.report.clone(),
        })
        .collect();
    Printed::new(
        name,
        namespace,
        status,
        PrintedReport {
            source: source.to_string(),
            output_dir,
            nodes,
        },
    )
}

/// Write all nodes of one generation into `target`, replacing it whole: files go to a sibling
/// temporary directory that is renamed into place, so a failure never leaves a partial tree.
pub fn write_atomically(target: &Path, nodes: &[&RenderedNode]) -> std::io::Result<()> {
    let parent = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        for node in nodes {
            write_node(&tmp.join(&node.dir_name), node)?;
        }
        if target.exists() {
            std::fs::remove_dir_all(target)?;
        }
        std::fs::rename(&tmp, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Write one node's files below `dir` (each directory created once).
pub fn write_node(dir: &Path, node: &RenderedNode) -> std::io::Result<()> {
    let parents: BTreeSet<PathBuf> = node
        .files
        .keys()
        .filter_map(|p| dir.join(p).parent().map(Path::to_path_buf))
        .collect();
    for p in &parents {
        std::fs::create_dir_all(p)?;
    }
    for (path, bytes) in &node.files {
        let file = dir.join(path);
        std::fs::write(&file, bytes)?;
        #[cfg(unix)]
        if node.executable.contains(path) {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}
