//! Reading what a user would `kubectl apply`: multi-document YAML with NodeGenerations (and the
//! ConfigMaps their `prdFrom` points at), or a bare PRD Markdown file.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::api::{NodeGeneration, NodeGenerationSpec};
use crate::naming::words;

const API_VERSION: &str = "codegen.omninode.ai/v1alpha1";
/// Largest input file read, in bytes.
pub const MAX_INPUT_BYTES: usize = 8 * 1024 * 1024;

/// One NodeGeneration to run, or the reason an input could not become one.
#[derive(Debug, Clone)]
pub enum Entry {
    Generation {
        name: String,
        namespace: Option<String>,
        spec: Box<NodeGenerationSpec>,
        prd: Result<String, Rejected>,
    },
    Rejected {
        name: String,
        rejected: Rejected,
    },
}

/// A clean, user-facing failure with a CamelCase reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub reason: String,
    pub message: String,
}

fn rejected(reason: &str, message: impl Into<String>) -> Rejected {
    Rejected {
        reason: reason.to_string(),
        message: message.into(),
    }
}

/// A DNS-1123 label for a bare PRD from its file name.
pub fn name_from_path(path: &str) -> String {
    let stem = std::path::Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut name = words(&stem).join("-");
    name.truncate(40);
    let name = name.trim_matches('-').to_string();
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        format!("prd-{name}").trim_end_matches('-').to_string()
    } else {
        name
    }
}

/// Whether `name` is a valid Kubernetes object name for our kinds (DNS-1123 label; children
/// append suffixes, so we keep it to 40 characters).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Entries of one input file.
pub fn read_input(path: &str, bytes: &[u8]) -> Vec<Entry> {
    let is_markdown = path.ends_with(".md") || path.ends_with(".markdown");
    let fallback = name_from_path(path);
    if bytes.len() > MAX_INPUT_BYTES {
        return vec![Entry::Rejected {
            name: fallback,
            rejected: rejected(
                "InputTooLarge",
                format!(
                    "{path} is {} bytes; the limit is {MAX_INPUT_BYTES}",
                    bytes.len()
                ),
            ),
        }];
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return vec![Entry::Rejected {
                name: fallback,
                rejected: rejected(
                    "InvalidEncoding",
                    format!("{path} is not valid UTF-8 (byte {})", e.valid_up_to()),
                ),
            }];
        }
    };
    if is_markdown {
        let spec = NodeGenerationSpec {
            prd: Some(text.to_string()),
            ..Default::default()
        };
        return vec![Entry::Generation {
            name: fallback,
            namespace: None,
            spec: Box::new(spec),
            prd: Ok(text.to_string()),
        }];
    }
    read_manifests(path, text, &fallback)
}

#[derive(Deserialize)]
struct Head {
    #[serde(default, rename = "apiVersion")]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Meta,
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct ConfigMapDoc {
    #[serde(default)]
    data: BTreeMap<String, String>,
}

fn read_manifests(path: &str, text: &str, fallback: &str) -> Vec<Entry> {
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        // Merge keys (`<<: *anchor`) are resolved the way kubectl's YAML reader resolves them.
        match serde_norway::Value::deserialize(doc).and_then(|mut v| v.apply_merge().map(|()| v)) {
            Ok(serde_norway::Value::Null) => {}
            Ok(v) => docs.push(v),
            Err(e) => {
                return vec![Entry::Rejected {
                    name: fallback.to_string(),
                    rejected: rejected(
                        "InvalidManifest",
                        format!("{path}: document {}: {e}", i + 1),
                    ),
                }];
            }
        }
    }
    let mut config_maps: BTreeMap<(Option<String>, String), BTreeMap<String, String>> =
        BTreeMap::new();
    let mut generations = Vec::new();
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let head: Head = match serde_norway::from_value(doc.clone()) {
            Ok(h) => h,
            Err(e) => {
                out.push(Entry::Rejected {
                    name: fallback.to_string(),
                    rejected: rejected(
                        "InvalidManifest",
                        format!("{path}: document {}: {e}", i + 1),
                    ),
                });
                continue;
            }
        };
        match (head.api_version.as_str(), head.kind.as_str()) {
            ("v1", "ConfigMap") => {
                if let (Some(name), Ok(cm)) = (
                    head.metadata.name.clone(),
                    serde_norway::from_value::<ConfigMapDoc>(doc),
                ) {
                    config_maps.insert((head.metadata.namespace.clone(), name), cm.data);
                }
            }
            (API_VERSION, "NodeGeneration") => generations.push((i, head, doc)),
            (api, kind) => {
                tracing::warn!(
                    path,
                    document = i + 1,
                    api,
                    kind,
                    "skipping a document that is not a NodeGeneration"
                );
            }
        }
    }
    if generations.is_empty() && out.is_empty() {
        out.push(Entry::Rejected {
            name: fallback.to_string(),
            rejected: rejected(
                "NoNodeGeneration",
                format!("{path} contains no {API_VERSION} NodeGeneration"),
            ),
        });
    }
    for (i, head, doc) in generations {
        let name = head.metadata.name.clone().unwrap_or_default();
        if !valid_name(&name) {
            out.push(Entry::Rejected {
                name: if name.is_empty() { fallback.to_string() } else { name_from_path(&name) },
                rejected: rejected("InvalidName", format!("{path}: document {}: metadata.name {name:?} must be a DNS-1123 label of at most 40 characters", i + 1)),
            });
            continue;
        }
        let ng: NodeGeneration = match serde_norway::from_value(doc) {
            Ok(ng) => ng,
            Err(e) => {
                out.push(Entry::Rejected {
                    name,
                    rejected: rejected("InvalidSpec", format!("{path}: document {}: {e}", i + 1)),
                });
                continue;
            }
        };
        let prd = resolve_prd(&ng.spec, &head.metadata.namespace, &config_maps);
        out.push(Entry::Generation {
            name,
            namespace: head.metadata.namespace,
            spec: Box::new(ng.spec),
            prd,
        });
    }
    out
}

/// Check the rules the CRD's schema and CEL enforce in a cluster, and find the PRD text.
fn resolve_prd(
    spec: &NodeGenerationSpec,
    namespace: &Option<String>,
    config_maps: &BTreeMap<(Option<String>, String), BTreeMap<String, String>>,
) -> Result<String, Rejected> {
    if spec.output.config_map.is_some() && spec.output.git.is_some() {
        return Err(rejected(
            "InvalidSpec",
            "set at most one of spec.output.configMap and spec.output.git",
        ));
    }
    for (field, value) in [
        ("threshold", spec.quality.threshold),
        ("onexThreshold", spec.quality.onex_threshold),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(rejected(
                "InvalidSpec",
                format!("spec.quality.{field} must be between 0 and 1"),
            ));
        }
    }
    match (&spec.prd, &spec.prd_from) {
        (Some(_), Some(_)) | (None, None) => Err(rejected(
            "InvalidSpec",
            "exactly one of spec.prd and spec.prdFrom must be set",
        )),
        (Some(prd), None) => Ok(prd.clone()),
        (None, Some(from)) => {
            let key = &from.config_map_key_ref;
            config_maps
                .get(&(namespace.clone(), key.name.clone()))
                .and_then(|data| data.get(&key.key))
                .cloned()
                .ok_or_else(|| {
                    rejected(
                        "PrdSourceNotFound",
                        format!(
                            "ConfigMap {} key {} not found among the input documents",
                            key.name, key.key
                        ),
                    )
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen_names(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| match e {
                Entry::Generation { name, prd, .. } => {
                    format!("{name}:{}", if prd.is_ok() { "ok" } else { "rejected" })
                }
                Entry::Rejected { name, rejected } => format!("{name}:{}", rejected.reason),
            })
            .collect()
    }

    #[test]
    fn reads_multi_document_manifests_with_prd_from() {
        let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: prds}\ndata: {orders.md: \"# Orders\\nWrites orders.\"}\n---\napiVersion: codegen.omninode.ai/v1alpha1\nkind: NodeGeneration\nmetadata: {name: orders}\nspec:\n  prdFrom: {configMapKeyRef: {name: prds, key: orders.md}}\n---\napiVersion: codegen.omninode.ai/v1alpha1\nkind: NodeGeneration\nmetadata: {name: both}\nspec: {prd: x, prdFrom: {configMapKeyRef: {name: a, key: b}}}\n";
        let entries = read_input("x.yaml", yaml.as_bytes());
        assert_eq!(gen_names(&entries), ["orders:ok", "both:rejected"]);
    }

    #[test]
    fn rejects_cleanly() {
        assert_eq!(
            gen_names(&read_input("a.yaml", b"\xff\xfe")),
            ["a:InvalidEncoding"]
        );
        assert_eq!(
            gen_names(&read_input("a.yaml", b"kind: Pod\napiVersion: v1\n")),
            ["a:NoNodeGeneration"]
        );
        assert_eq!(
            gen_names(&read_input("a.yaml", b"a: [1, 2")),
            ["a:InvalidManifest"]
        );
        let bad_name = b"apiVersion: codegen.omninode.ai/v1alpha1\nkind: NodeGeneration\nmetadata: {name: Bad_Name}\nspec: {prd: x}\n";
        assert_eq!(
            gen_names(&read_input("a.yaml", bad_name)),
            ["bad-name:InvalidName"]
        );
        let bad_spec = b"apiVersion: codegen.omninode.ai/v1alpha1\nkind: NodeGeneration\nmetadata: {name: n}\nspec: {prd: [1]}\n";
        assert_eq!(
            gen_names(&read_input("a.yaml", bad_spec)),
            ["n:InvalidSpec"]
        );
        assert_eq!(name_from_path("dir/My PRD (v2).md"), "my-prd-v2");
        assert_eq!(name_from_path("9.md"), "prd-9");
    }
}
