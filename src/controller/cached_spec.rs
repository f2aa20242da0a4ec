//! A GeneratedNode's spec as its cache entry keeps it.
//!
//! The spec was the largest part of a cached node after its metadata: 256 bytes inline and six
//! strings. Most of it repeats across nodes or follows from the node's name: the domain,
//! version and runtime range come from a small vocabulary and are shared; the content hash is
//! a SHA-256 kept as its 32 bytes; the code ConfigMap is almost always `<node>-code`; the
//! deploy settings are almost always the defaults. [`CachedSpec::to_spec`] gives back exactly
//! the spec it was made from.

use std::sync::Arc;

use super::compact::{HexDigest, shared_value};
use super::node_generation::code_config_map_name;
use crate::api::{ConfigMapSource, GeneratedNodeDeploy, GeneratedNodeSpec, NodeSource, NodeType};

#[derive(Clone, Debug, PartialEq)]
pub struct CachedSpec {
    node_type: NodeType,
    domain: Arc<str>,
    service_name: Box<str>,
    version: Arc<str>,
    runtime: Option<Arc<str>>,
    content_hash: HexDigest,
    source: Source,
    /// `None` for the defaults.
    deploy: Option<Box<GeneratedNodeDeploy>>,
    pub depends_on: Box<[Box<str>]>,
}

#[derive(Clone, Debug, PartialEq)]
enum Source {
    /// The ConfigMap `<node>-code`, as the NodeGeneration controller names it.
    Code,
    ConfigMap(Box<str>),
    Other(Box<NodeSource>),
}

impl CachedSpec {
    /// The spec of node `name`.
    pub fn new(spec: GeneratedNodeSpec, name: &str) -> Self {
        let content_hash = HexDigest::new(spec.content_hash);
        let source = match spec.source {
            NodeSource {
                config_map: Some(cm),
                git: None,
            } if cm.name == code_config_map_name(name) => Source::Code,
            NodeSource {
                config_map: Some(cm),
                git: None,
            } => Source::ConfigMap(cm.name.into_boxed_str()),
            other => Source::Other(Box::new(other)),
        };
        CachedSpec {
            node_type: spec.node_type,
            domain: shared_value(&spec.domain),
            service_name: spec.service_name.into_boxed_str(),
            version: shared_value(&spec.version),
            runtime: spec.runtime.as_deref().map(shared_value),
            content_hash,
            source,
            deploy: (spec.deploy != GeneratedNodeDeploy::default()).then(|| Box::new(spec.deploy)),
            depends_on: spec
                .depends_on
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
        }
    }

    /// The spec as the API has it, of node `name`.
    pub fn to_spec(&self, name: &str) -> GeneratedNodeSpec {
        GeneratedNodeSpec {
            node_type: self.node_type,
            domain: self.domain.to_string(),
            service_name: self.service_name.to_string(),
            version: self.version.to_string(),
            source: match &self.source {
                Source::Code => NodeSource {
                    config_map: Some(ConfigMapSource {
                        name: code_config_map_name(name),
                    }),
                    git: None,
                },
                Source::ConfigMap(cm) => NodeSource {
                    config_map: Some(ConfigMapSource {
                        name: cm.to_string(),
                    }),
                    git: None,
                },
                Source::Other(source) => (**source).clone(),
            },
            content_hash: self.content_hash.text(),
            deploy: self.deploy.as_deref().cloned().unwrap_or_default(),
            runtime: self.runtime.as_deref().map(str::to_string),
            depends_on: self.depends_on.iter().map(|d| d.to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GitSource;

    fn spec() -> GeneratedNodeSpec {
        GeneratedNodeSpec {
            node_type: NodeType::Compute,
            domain: "auth".into(),
            service_name: "invoice_document_parser".into(),
            version: "1.0.0".into(),
            source: NodeSource {
                config_map: Some(ConfigMapSource {
                    name: "parser-code".into(),
                }),
                git: None,
            },
            content_hash: "1d18c161cc6eab1bdffda900cda2a8ba6fca470ff3e358ad981dc532a95e3a49".into(),
            deploy: GeneratedNodeDeploy::default(),
            runtime: Some(">=0.1.0,<0.2.0".into()),
            depends_on: vec!["store".into()],
        }
    }

    #[test]
    fn a_spec_comes_back_exactly() {
        let mut specs = vec![spec()];
        let mut other = spec();
        other.source.config_map = Some(ConfigMapSource {
            name: "elsewhere".into(),
        });
        other.content_hash = "ABC".into();
        other.deploy.replicas = 3;
        other.runtime = None;
        specs.push(other);
        let mut git = spec();
        git.source = NodeSource {
            config_map: None,
            git: Some(Box::new(GitSource {
                repository: "https://example.com/r.git".into(),
                revision: "main".into(),
                path: "nodes/parser".into(),
                shared_path: None,
            })),
        };
        git.content_hash = String::new();
        specs.push(git);
        let mut upper = spec();
        upper.content_hash = upper.content_hash.to_uppercase();
        specs.push(upper);
        for s in specs {
            assert_eq!(CachedSpec::new(s.clone(), "parser").to_spec("parser"), s);
        }
    }

    #[test]
    fn the_usual_spec_keeps_only_the_service_name_of_its_own() {
        let cached = CachedSpec::new(spec(), "parser");
        assert_eq!(cached.source, Source::Code);
        assert!(matches!(cached.content_hash, HexDigest::Sha256(_)));
        assert_eq!(cached.deploy, None);
        let again = CachedSpec::new(spec(), "parser");
        assert!(Arc::ptr_eq(&cached.domain, &again.domain));
        assert!(Arc::ptr_eq(&cached.version, &again.version));
    }
}
