//! What a generation commits to Git: its node directories and one GeneratedNode manifest per
//! node, under a directory of its own, and the commit message.
//!
//! Layout, below `spec.output.git.path`:
//! `<namespace>/<generation>/nodes/<node>/…` (the code),
//! `<namespace>/<generation>/shared/<package>/…` (a system's shared models, when it has any) and
//! `<namespace>/<generation>/manifests/<node>.yaml` (what Argo CD applies; nothing else is in
//! that directory, so an Application can point at it).
//!
//! A manifest cannot name the commit it is part of, so each node's `source.git.revision` is a
//! tag, `omninode/<node>/<content hash>`, pushed with the commit that first holds that content:
//! immutable, content-addressed, and unchanged while the node's code is unchanged (its pods do
//! not roll when only a sibling changes).

use std::collections::{BTreeMap, BTreeSet};

use minijinja::Environment;
use serde::Serialize;

use super::git::{Change, File, Signature};
use crate::api::{GeneratedNode, GitOutput, GitSource, NodeGeneration, NodeSource};
use crate::pipeline::NodeOutcome;
use crate::render::RenderedShared;

pub const DEFAULT_AUTHOR_NAME: &str = "omninode-operator";
pub const DEFAULT_AUTHOR_EMAIL: &str = "omninode-operator@noreply.omninode.ai";

/// The default commit message: names the NodeGeneration, its UID and every content hash.
pub const DEFAULT_MESSAGE: &str = "\
omninode: {{ namespace }}/{{ name }} generation {{ generation }}

NodeGeneration: {{ namespace }}/{{ name }}
UID: {{ uid }}
{% for node in nodes %}
{{ node.name }} ({{ node.type }}): {{ node.contentHash }}
{%- endfor %}
";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("spec.output.git.messageTemplate: {0}")]
pub struct MessageTemplateError(pub String);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeInfo<'a> {
    name: &'a str,
    r#type: String,
    content_hash: &'a str,
    quality: f64,
}

#[derive(Serialize)]
struct MessageContext<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    generation: i64,
    nodes: Vec<NodeInfo<'a>>,
}

/// The generation's directory in the repository.
pub fn generation_root(prefix: &str, namespace: &str, name: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{namespace}/{name}")
    } else {
        format!("{prefix}/{namespace}/{name}")
    }
}

/// The tag a node's manifest names as its revision.
pub fn revision_tag(node: &str, content_hash: &str) -> String {
    let short: String = content_hash.chars().take(16).collect();
    format!("omninode/{node}/{short}")
}

/// The commit of generation `ng` with its `nodes`.
pub fn change(
    ng: &NodeGeneration,
    output: &GitOutput,
    nodes: &[NodeOutcome],
    shared: Option<&RenderedShared>,
) -> Result<Change, MessageTemplateError> {
    let namespace = ng.metadata.namespace.as_deref().unwrap_or("default");
    let name = ng.metadata.name.as_deref().unwrap_or_default();
    let root = generation_root(&output.path, namespace, name);
    let mut files = BTreeMap::new();
    let shared_package = shared.map(|s| {
        let dir = format!("{root}/shared/{}", s.dir_name);
        for (path, data) in &s.files {
            files.insert(
                format!("{dir}/{path}"),
                File {
                    data: data.clone(),
                    executable: false,
                },
            );
        }
        format!("{dir}/{}", s.context.package)
    });
    let mut user_dirs = BTreeSet::new();
    let mut tags = BTreeSet::new();
    for node in nodes {
        let node_dir = format!("{root}/nodes/{}", node.name);
        user_dirs.extend(
            node.rendered
                .user_files
                .iter()
                .filter_map(|p| p.rsplit_once('/'))
                .map(|(dir, _)| format!("{node_dir}/{dir}")),
        );
        for (path, data) in &node.rendered.files {
            files.insert(
                format!("{node_dir}/{path}"),
                File {
                    data: data.clone(),
                    executable: false,
                },
            );
        }
        let tag = revision_tag(&node.name, &node.rendered.content_hash);
        let shared_path = shared_package
            .clone()
            .filter(|_| node.rendered.context.shared.is_some());
        let manifest = manifest(ng, output, node, &tag, &node_dir, shared_path);
        files.insert(
            format!("{root}/manifests/{}.yaml", node.name),
            File {
                data: manifest.into_bytes(),
                executable: false,
            },
        );
        tags.insert(tag);
    }
    let author = output.author.as_ref();
    Ok(Change {
        message: message(ng, output, nodes)?,
        root,
        files,
        user_dirs,
        tags,
        author: Signature {
            name: author.map_or(DEFAULT_AUTHOR_NAME.into(), |a| a.name.clone()),
            email: author.map_or(DEFAULT_AUTHOR_EMAIL.into(), |a| a.email.clone()),
        },
    })
}

/// The GeneratedNode manifest of one node: no namespace (the Application's destination
/// decides), no owner (Argo CD owns what it applies), the operator's labels only.
fn manifest(
    ng: &NodeGeneration,
    output: &GitOutput,
    node: &NodeOutcome,
    tag: &str,
    node_dir: &str,
    shared_path: Option<String>,
) -> String {
    let generation = ng.metadata.name.as_deref().unwrap_or_default();
    let spec = node.generated_node_spec(
        &ng.spec.deploy,
        NodeSource {
            config_map: None,
            git: Some(Box::new(GitSource {
                repository: output.repository.clone(),
                revision: tag.to_string(),
                path: node_dir.to_string(),
                shared_path,
            })),
        },
    );
    let mut gn = GeneratedNode::new(&node.name, spec);
    gn.metadata.labels = Some(node.labels(generation));
    // Serialising a plain struct of strings and numbers cannot fail.
    serde_norway::to_string(&gn).unwrap_or_default()
}

fn message(
    ng: &NodeGeneration,
    output: &GitOutput,
    nodes: &[NodeOutcome],
) -> Result<String, MessageTemplateError> {
    let template = output
        .message_template
        .as_deref()
        .unwrap_or(DEFAULT_MESSAGE);
    let mut env = Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let context = MessageContext {
        namespace: ng.metadata.namespace.as_deref().unwrap_or("default"),
        name: ng.metadata.name.as_deref().unwrap_or_default(),
        uid: ng.metadata.uid.as_deref().unwrap_or_default(),
        generation: ng.metadata.generation.unwrap_or(0),
        nodes: nodes
            .iter()
            .map(|n| NodeInfo {
                name: &n.name,
                r#type: n.planned.node_type.to_string(),
                content_hash: &n.rendered.content_hash,
                quality: n.report.overall,
            })
            .collect(),
    };
    let text = env
        .render_str(template, &context)
        .map_err(|e| MessageTemplateError(e.to_string()))?;
    if text.trim().is_empty() {
        return Err(MessageTemplateError("renders an empty message".into()));
    }
    Ok(format!("{}\n", text.trim_end()))
}
