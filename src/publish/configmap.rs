//! A rendered node as a ConfigMap. ConfigMap keys cannot hold `/`, so every path gets a key
//! (`/` → `-`, reversible because generated paths never contain `-`) and the Deployment's
//! volume `items` map the keys back to the paths.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::render::{RenderedNode, RenderedShared};

/// Kubernetes rejects objects over 1 MiB; keep a margin for metadata.
pub const MAX_CONFIGMAP_BYTES: usize = 1024 * 1024 - 16 * 1024;
/// Annotation holding the node's content hash.
pub const CONTENT_HASH_ANNOTATION: &str = "codegen.omninode.ai/content-hash";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigMapError {
    #[error(
        "node {node} has {bytes} bytes of files; a ConfigMap holds at most {MAX_CONFIGMAP_BYTES}"
    )]
    TooLarge { node: String, bytes: usize },
    #[error("files {a} and {b} of node {node} map to the same ConfigMap key")]
    KeyCollision { node: String, a: String, b: String },
    #[error(
        "file {path} of node {node} has a name a ConfigMap key cannot carry back (only letters, digits, `_`, `.` and `/`)"
    )]
    UnsupportedPath { node: String, path: String },
}

impl ConfigMapError {
    pub fn reason(&self) -> &'static str {
        match self {
            ConfigMapError::TooLarge { .. } => "NodeTooLarge",
            ConfigMapError::KeyCollision { .. } => "ConfigMapKeyCollision",
            ConfigMapError::UnsupportedPath { .. } => "UnsupportedFileName",
        }
    }
}

/// The ConfigMap key of a file path.
pub fn key_for(path: &str) -> String {
    path.replace('/', "-")
}

/// The file path of a ConfigMap key (the inverse of [`key_for`]).
pub fn path_for(key: &str) -> String {
    key.replace('-', "/")
}

/// Whether a node's file is needed to run it: its packaging (`pyproject.toml`) and its tests are
/// for a checkout, not for the pod, and would only cost etcd and the API server their bytes in
/// every code ConfigMap. The content hash still covers every file.
pub fn runs_in_pod(path: &str) -> bool {
    path != "pyproject.toml" && !path.split('/').any(|part| part == "tests")
}

fn supported(path: &str) -> bool {
    !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/'))
}

/// Put the user's handler files in place of the node's defaults. `data` is keyed like the code
/// ConfigMaps (paths with `/` as `-`); every Python file it has below one of the node's user
/// directories (`<package>/handlers/`) is taken, a generated file there (`__init__.py`) never.
/// Returns the paths taken, sorted; the content hash then covers them, so pods roll when the
/// user's code changes.
pub fn overlay_user_files(node: &mut RenderedNode, data: &BTreeMap<String, String>) -> Vec<String> {
    let dirs: std::collections::BTreeSet<&str> = node
        .user_files
        .iter()
        .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d))
        .collect();
    let mut taken = Vec::new();
    for key in data.keys() {
        let path = path_for(key);
        let in_user_dir = path
            .rsplit_once('/')
            .is_some_and(|(d, f)| dirs.contains(d) && f.ends_with(".py"));
        let generated = node.files.contains_key(&path) && !node.user_files.contains(&path);
        if supported(&path) && in_user_dir && !generated {
            taken.push(path);
        }
    }
    taken.sort();
    for path in &taken {
        if let Some(text) = data.get(&key_for(path)) {
            node.files.insert(path.clone(), text.clone().into_bytes());
        }
    }
    if !taken.is_empty() {
        node.rehash();
    }
    taken
}

/// The ConfigMap of one node (without owner references: the caller adds them): one key per file
/// the pod runs ([`runs_in_pod`]), its path with `/` as `-`, which the runtime's launcher maps
/// back at start-up. A node that imports its system's shared models carries their package too
/// (a few KiB), so the pod needs no second volume.
pub fn config_map(
    name: &str,
    namespace: Option<&str>,
    labels: BTreeMap<String, String>,
    node: &RenderedNode,
    shared: Option<&RenderedShared>,
) -> Result<ConfigMap, ConfigMapError> {
    let shared_files: Vec<(&String, &Vec<u8>)> = match (shared, &node.context.shared) {
        (Some(shared), Some(_)) => shared.package_files().collect(),
        _ => Vec::new(),
    };
    let bytes = node.total_bytes() + shared_files.iter().map(|(_, b)| b.len()).sum::<usize>();
    if bytes > MAX_CONFIGMAP_BYTES {
        return Err(ConfigMapError::TooLarge {
            node: node.dir_name.clone(),
            bytes,
        });
    }
    let mut data = BTreeMap::new();
    let mut owners: BTreeMap<String, &str> = BTreeMap::new();
    let files = node.files.iter().filter(|(p, _)| runs_in_pod(p));
    for (path, content) in files.chain(shared_files) {
        if !supported(path) {
            return Err(ConfigMapError::UnsupportedPath {
                node: node.dir_name.clone(),
                path: path.clone(),
            });
        }
        let key = key_for(path);
        if let Some(other) = owners.insert(key.clone(), path) {
            return Err(ConfigMapError::KeyCollision {
                node: node.dir_name.clone(),
                a: other.to_string(),
                b: path.clone(),
            });
        }
        data.insert(key, String::from_utf8_lossy(content).into_owned());
    }
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: namespace.map(str::to_string),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                CONTENT_HASH_ANNOTATION.to_string(),
                node.content_hash.clone(),
            )])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    Ok(cm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{Overrides, plan};
    use crate::prd::parse;
    use crate::render::Renderer;

    fn rendered() -> RenderedNode {
        let prd = parse("# Order Writer\n## Requirements\n- Write order records to PostgreSQL\n")
            .unwrap();
        let p = plan(
            &prd,
            &Overrides {
                fallback_name: "orders",
                ..Default::default()
            },
            None,
        )
        .unwrap();
        Renderer::embedded()
            .unwrap()
            .render(
                &p.nodes[0],
                "orders",
                &p.external_systems,
                &p.dependencies,
                None,
            )
            .unwrap()
    }

    #[test]
    fn every_file_the_pod_runs_has_a_key_that_maps_back_to_its_path() {
        let node = rendered();
        let cm = config_map("orders-code", Some("ns"), BTreeMap::new(), &node, None).unwrap();
        let data = cm.data.unwrap();
        let runs: Vec<&String> = node.files.keys().filter(|p| runs_in_pod(p)).collect();
        assert_eq!(data.len(), runs.len());
        assert!(
            runs.len() < node.files.len(),
            "tests and pyproject.toml stay out"
        );
        assert!(!data.contains_key("pyproject.toml"));
        assert!(!data.keys().any(|k| k.contains("-tests-")));
        for (key, text) in &data {
            assert!(!key.contains('/'));
            assert_eq!(text.as_bytes(), node.files[&path_for(key)].as_slice());
        }
        assert!(data.keys().any(|k| k.ends_with("-__main__.py")));
        assert_eq!(
            cm.metadata.annotations.unwrap()[CONTENT_HASH_ANNOTATION],
            node.content_hash
        );
    }

    #[test]
    fn the_users_handlers_replace_the_defaults_and_nothing_else() {
        let mut node = rendered();
        let handler = node.user_files.iter().next().unwrap().clone();
        let package = handler.split('/').next().unwrap().to_string();
        let before = node.content_hash.clone();
        let data = BTreeMap::from([
            (
                key_for(&handler),
                "async def mine() -> None: ...\n".to_string(),
            ),
            (
                key_for(&format!("{package}/handlers/helpers.py")),
                "X = 1\n".to_string(),
            ),
            // Not the user's to replace: generated files and other directories.
            (
                key_for(&format!("{package}/handlers/__init__.py")),
                "evil\n".to_string(),
            ),
            (key_for(&format!("{package}/node.py")), "evil\n".to_string()),
        ]);
        let taken = overlay_user_files(&mut node, &data);
        assert_eq!(
            taken,
            [handler.clone(), format!("{package}/handlers/helpers.py")]
        );
        assert_eq!(node.files[&handler], b"async def mine() -> None: ...\n");
        assert!(
            !String::from_utf8_lossy(&node.files[&format!("{package}/node.py")]).contains("evil")
        );
        assert_ne!(node.content_hash, before);
    }

    #[test]
    fn oversized_nodes_fail_with_a_reason() {
        let mut node = rendered();
        node.files
            .insert("big.txt".into(), vec![b'x'; MAX_CONFIGMAP_BYTES]);
        let err = config_map("x", None, BTreeMap::new(), &node, None).unwrap_err();
        assert_eq!(err.reason(), "NodeTooLarge");
    }
}
