//! The built-in pattern library, loaded from `pattern_library.yaml` embedded in the binary.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::api::NodeType;

#[derive(Debug, Deserialize)]
pub struct Library {
    pub confidence: f64,
    pub node_types: BTreeMap<String, TypePatterns>,
    pub mixins: BTreeMap<String, Vec<String>>,
    pub external_systems: Vec<ExternalSystemPattern>,
    pub domains: BTreeMap<String, Vec<String>>,
    pub stopwords: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct TypePatterns {
    /// Indicator words (CONTRACTS.md §3): the classifier's prior for short texts.
    pub indicators: Vec<String>,
    pub default_operations: Vec<DefaultOperation>,
    pub default_mixins: Vec<String>,
    pub performance: Performance,
}

#[derive(Debug, Deserialize, Clone)]
pub struct DefaultOperation {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Deserialize, Clone, serde::Serialize, PartialEq)]
pub struct Performance {
    pub key: String,
    pub value: u64,
}

#[derive(Debug, Deserialize)]
pub struct ExternalSystemPattern {
    pub name: String,
    pub kind: String,
    pub keywords: Vec<String>,
}

const SOURCE: &str = include_str!("pattern_library.yaml");

/// The library, parsed once. It is part of the binary, so a parse failure is a build defect;
/// the unit test below guarantees it parses.
pub fn library() -> &'static Library {
    static LIBRARY: OnceLock<Library> = OnceLock::new();
    LIBRARY.get_or_init(|| match serde_norway::from_str(SOURCE) {
        Ok(lib) => lib,
        Err(e) => panic!("embedded pattern_library.yaml is invalid: {e}"),
    })
}

impl Library {
    pub fn patterns(&self, t: NodeType) -> &TypePatterns {
        match self.node_types.get(t.as_str()) {
            Some(p) => p,
            None => panic!("embedded pattern library lacks node type {t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_library_is_complete() {
        let lib = library();
        for t in NodeType::ALL {
            let p = lib.patterns(t);
            assert!(!p.default_operations.is_empty());
        }
        assert_eq!(lib.mixins.len(), 9);
        assert!((lib.confidence - 0.7).abs() < 1e-9);
    }
}
