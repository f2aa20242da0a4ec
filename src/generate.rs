//! The offline `generate` command: manifests in, node directories and the status each
//! NodeGeneration would get out. No cluster, no broker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::api::{Condition, ConditionStatus, NodeGenerationStatus};
use crate::codegen::{self, Identity};
use crate::intelligence::IntelligenceClient;
use crate::manifest::{self, Entry, Rejected};
use crate::pipeline::Outcome;
use crate::quality::QualityReport;
use crate::render::{RenderedNode, RenderedShared, Renderer};
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
    // Generated nodes require `omninode-runtime`; its wheel goes beside them for `--find-links`.
    let written = |p: &Printed| p.report.output_dir.is_some();
    if printed.iter().any(written)
        && let Err(e) = crate::runtime_dist::write_runtime(output)
    {
        let msg = format!(
            "writing the omninode-runtime wheel to {} failed: {e}",
            output.display()
        );
        for p in printed.iter_mut().filter(|p| written(p)) {
            for kind in [PUBLISHED, READY] {
                let c = Condition::new(kind, ConditionStatus::False, "WriteFailed", msg.clone());
                status::set_condition(&mut p.status.conditions, c, None);
            }
            p.status.phase = Some(status::phase(&p.status.conditions));
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
            match write_atomically(&target, &nodes, outcome.shared.as_ref()) {
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
/// The user's files of the previous tree (handler modules) are carried over byte for byte. A
/// system's shared models package goes beside its nodes.
pub fn write_atomically(
    target: &Path,
    nodes: &[&RenderedNode],
    shared: Option<&RenderedShared>,
) -> std::io::Result<()> {
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
            let previous = target.join(&node.dir_name);
            write_node(&tmp.join(&node.dir_name), node, Some(&previous))?;
        }
        if let Some(shared) = shared {
            write_files(&tmp.join(&shared.dir_name), &shared.files)?;
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

/// Write one node's files below `dir` (each directory created once). With `previous` (the
/// node's directory from an earlier run), the user's files are the ones found there, and every
/// other file of the user's directories (a handler whose operation disappeared) is kept too.
pub fn write_node(dir: &Path, node: &RenderedNode, previous: Option<&Path>) -> std::io::Result<()> {
    let mut files: BTreeMap<String, Vec<u8>> = node.files.clone();
    if let Some(previous) = previous {
        for (path, bytes) in user_files_in(previous, node)? {
            files.insert(path, bytes);
        }
    }
    write_files(dir, &files)
}

/// Write `files` (relative path → content) below `dir`, each directory created once.
fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    let parents: BTreeSet<PathBuf> = files
        .keys()
        .filter_map(|p| dir.join(p).parent().map(Path::to_path_buf))
        .collect();
    for p in &parents {
        std::fs::create_dir_all(p)?;
    }
    for (path, bytes) in files {
        std::fs::write(dir.join(path), bytes)?;
    }
    Ok(())
}

/// The user's files of an earlier tree of `node`: every regular file in the directories that
/// hold its user files (the handler modules), except the generated files among them.
fn user_files_in(previous: &Path, node: &RenderedNode) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let dirs: BTreeSet<&str> = node
        .user_files
        .iter()
        .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d))
        .collect();
    let mut out = Vec::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(previous.join(dir)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{dir}/{name}");
            let generated = node.files.contains_key(&path) && !node.user_files.contains(&path);
            if entry.file_type()?.is_file() && !generated {
                out.push((path, std::fs::read(entry.path())?));
            }
        }
    }
    Ok(out)
}
