//! The offline `generate` command: manifests in, node directories and the status each
//! NodeGeneration would get out. No cluster, no broker.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::api::{Condition, ConditionStatus, NodeGenerationStatus};
use crate::codegen::{self, Identity};
use crate::intelligence::IntelligenceClient;
use crate::manifest::{self, Entry, Rejected};
use crate::pipeline::Outcome;
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
                                match codegen::run(
                                    renderer,
                                    &Identity::offline(&ns, &name),
                                    &spec,
                                    &prd,
                                    client,
                                )
                                .await
                                {
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
