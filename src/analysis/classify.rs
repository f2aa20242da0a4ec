//! Node-type classification: which of the four ONEX types a piece of PRD text describes.
//!
//! An explicit statement ("this is an effect node", "type: compute") wins. Otherwise a Bernoulli
//! naive Bayes model decides, trained on labelled PRDs (`tests/corpus/classification*`) and
//! embedded as data (`classifier_model.json`); `omninode-operator train-classifier` rebuilds it
//! from a corpus, so teams can retrain it on their own PRDs. Keyword lists alone were measured
//! at 69–72% on PRDs they were not tuned on; the model reaches ≥ 95% (see docs/classification.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::api::NodeType;
use crate::naming::words;

/// The classification of one unit.
#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    pub node_type: NodeType,
    /// Posterior probability of the winning type (1.0 for explicit statements).
    pub confidence: f64,
    pub explicit: bool,
}

/// Find an explicit node-type statement.
pub fn explicit_type(text: &str) -> Option<NodeType> {
    let w = words(text);
    for (i, word) in w.iter().enumerate() {
        // "<type> node"
        if let Some(t) = NodeType::parse(word)
            && w.get(i + 1).is_some_and(|n| n == "node")
        {
            return Some(t);
        }
        // "node type: <type>" / "type: <type>" / "type = <type>"
        if word == "type"
            && let Some(t) = w.get(i + 1).and_then(|n| NodeType::parse(n))
        {
            return Some(t);
        }
    }
    None
}

/// Words that carry no evidence about the node type.
const STOPWORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "and",
    "or",
    "of",
    "to",
    "for",
    "in",
    "on",
    "at",
    "by",
    "with",
    "from",
    "into",
    "onto",
    "as",
    "is",
    "are",
    "be",
    "been",
    "being",
    "it",
    "its",
    "this",
    "that",
    "these",
    "those",
    "must",
    "should",
    "shall",
    "will",
    "can",
    "could",
    "would",
    "may",
    "might",
    "each",
    "every",
    "all",
    "any",
    "some",
    "via",
    "per",
    "when",
    "which",
    "who",
    "whose",
    "where",
    "then",
    "than",
    "so",
    "such",
    "we",
    "our",
    "you",
    "your",
    "they",
    "their",
    "system",
    "service",
    "node",
    "nodes",
    "prd",
    "module",
    "component",
    "allow",
    "allows",
    "support",
    "supports",
    "provide",
    "provides",
    "ability",
    "able",
    "new",
    "using",
    "use",
    "based",
    "also",
    "up",
    "out",
];
/// After one of these, the rest of a clause says what the component does *not* do.
const NEGATIONS: &[&str] = &[
    "not", "never", "no", "without", "nor", "doesn", "don", "isn", "won", "instead",
];
/// Features are word prefixes of this many characters (a cheap, language-agnostic stemmer).
const STEM: usize = 6;
/// A feature must occur in this many training documents to be kept.
const MIN_DOCUMENTS: u32 = 2;
/// Laplace smoothing.
const ALPHA: f64 = 1.0;
/// Pseudo-documents per type that contain the pattern library's indicator words: a prior that
/// decides short texts (a one-line component description) where the corpus model has little
/// to go on, and barely moves long ones.
const PRIOR_DOCUMENTS: u32 = 2;

/// The set of features of a text: stemmed words outside out-of-scope sections and negated
/// clauses.
pub fn features(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut skipping = false;
    for line in text.lines() {
        let l = line.trim_start();
        if l.starts_with('#') {
            let heading = words(l).join(" ");
            skipping = heading.starts_with("non goal")
                || heading.starts_with("nongoal")
                || heading.starts_with("out of scope");
            if skipping {
                continue;
            }
        }
        if skipping {
            continue;
        }
        for clause in l.split(['.', ',', ';', ':', '(', ')', '!', '?']) {
            for w in words(clause) {
                if NEGATIONS.contains(&w.as_str()) {
                    break;
                }
                if STOPWORDS.contains(&w.as_str()) || w.chars().all(|c| c.is_ascii_digit()) {
                    continue;
                }
                out.insert(w.chars().take(STEM).collect());
            }
        }
    }
    out
}

/// The trained model as stored: document counts per type and per feature, in
/// [`NodeType::ALL`] order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ModelData {
    /// Corpora the model was trained on, for the record.
    pub trained_on: Vec<String>,
    pub documents: [u32; 4],
    /// Median number of model features in a training document; shorter texts weigh the
    /// absence of features less (a one-liner lacks most words by nature, not by meaning).
    pub median_features: u32,
    pub features: BTreeMap<String, [u32; 4]>,
}

/// Count features over labelled documents.
pub fn train(trained_on: Vec<String>, docs: &[(NodeType, String)]) -> ModelData {
    let mut documents = [0u32; 4];
    let mut counts: BTreeMap<String, [u32; 4]> = BTreeMap::new();
    for (label, text) in docs {
        let i = index(*label);
        documents[i] += 1;
        for f in features(text) {
            counts.entry(f).or_default()[i] += 1;
        }
    }
    counts.retain(|_, c| c.iter().sum::<u32>() >= MIN_DOCUMENTS);
    let mut sizes: Vec<u32> = docs
        .iter()
        .map(|(_, text)| {
            features(text)
                .iter()
                .filter(|f| counts.contains_key(*f))
                .count() as u32
        })
        .collect();
    sizes.sort_unstable();
    let median_features = sizes.get(sizes.len() / 2).copied().unwrap_or(1).max(1);
    ModelData {
        trained_on,
        documents,
        median_features,
        features: counts,
    }
}

fn index(t: NodeType) -> usize {
    NodeType::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

/// Log-probabilities ready for scoring.
pub struct Model {
    /// Sum of log(1 - p) over all features: the score of a text with none of them.
    absent: [f64; 4],
    /// (log p, log(1 - p)) per feature and type.
    logp: HashMap<String, [(f64, f64); 4]>,
    median_features: f64,
}

impl Model {
    /// Build the scorer from trained data plus the indicator-word prior (`indicators[i]` are
    /// the words of `NodeType::ALL[i]`).
    pub fn new(data: &ModelData, indicators: &[Vec<String>; 4]) -> Self {
        let mut counts = data.features.clone();
        let mut documents = data.documents;
        for (i, words) in indicators.iter().enumerate() {
            documents[i] += PRIOR_DOCUMENTS;
            let stems: BTreeSet<String> = words
                .iter()
                .map(|w| w.chars().take(STEM).collect())
                .collect();
            for stem in stems {
                counts.entry(stem).or_default()[i] += PRIOR_DOCUMENTS;
            }
        }
        let mut absent = [0.0; 4];
        let mut logp = HashMap::with_capacity(counts.len());
        for (feature, c) in &counts {
            let mut probs = [(0.0, 0.0); 4];
            for i in 0..4 {
                let p = (c[i] as f64 + ALPHA) / (documents[i] as f64 + 2.0 * ALPHA);
                probs[i] = (p.ln(), (1.0 - p).ln());
                absent[i] += probs[i].1;
            }
            logp.insert(feature.clone(), probs);
        }
        Model {
            absent,
            logp,
            median_features: data.median_features.max(1) as f64,
        }
    }

    /// Classify text (explicit statements first).
    pub fn classify(&self, text: &str) -> Classification {
        if let Some(t) = explicit_type(text) {
            return Classification {
                node_type: t,
                confidence: 1.0,
                explicit: true,
            };
        }
        let present: Vec<&[(f64, f64); 4]> = features(text)
            .iter()
            .filter_map(|f| self.logp.get(f))
            .collect();
        let scale = (present.len() as f64 / self.median_features).min(1.0);
        let mut scores = [0.0; 4];
        for i in 0..4 {
            let mut absent = self.absent[i];
            for probs in &present {
                scores[i] += probs[i].0;
                absent -= probs[i].1;
            }
            scores[i] += scale * absent;
        }
        // Ties resolve to the earliest type in ALL order, deterministically.
        let best = (0..4).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
        let total: f64 = scores.iter().map(|s| (s - scores[best]).exp()).sum();
        Classification {
            node_type: NodeType::ALL[best],
            // Naive Bayes posteriors are overconfident; a model is never certain.
            confidence: ((1.0 / total) * 100.0).round().min(99.0) / 100.0,
            explicit: false,
        }
    }
}

const MODEL_SOURCE: &str = include_str!("classifier_model.json");

/// The embedded model, loaded once. It is part of the binary, so a parse failure is a build
/// defect; the unit tests guarantee it loads. (JSON rather than YAML: it loads in ~0.3 ms where
/// the same model as YAML took ~7 ms, a third of a whole `generate` command.)
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| match serde_json::from_str::<ModelData>(MODEL_SOURCE) {
        Ok(data) => {
            let lib = super::library();
            let indicators = NodeType::ALL.map(|t| lib.patterns(t).indicators.clone());
            Model::new(&data, &indicators)
        }
        Err(e) => panic!("embedded classifier_model.json is invalid: {e}"),
    })
}

/// The embedded model's data, for reproducibility checks.
pub fn embedded_model_data() -> Result<ModelData, serde_json::Error> {
    serde_json::from_str(MODEL_SOURCE)
}

/// Serialise model data the way `classifier_model.json` stores it: one feature per line, so a
/// retrained model diffs by feature. The `about` key is documentation; loading ignores it.
pub fn model_json(data: &ModelData) -> String {
    // Serialising a string or a number to JSON cannot fail.
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let counts = |c: &[u32; 4]| format!("[{}, {}, {}, {}]", c[0], c[1], c[2], c[3]);
    let mut out = String::from(
        "{\n  \"about\": \"Bernoulli naive Bayes node-type model: documents per type and, per \
         feature (a word prefix), the number of documents of each type containing it, in the \
         order [effect, compute, reducer, orchestrator]. Generated by `omninode-operator \
         train-classifier`; do not edit by hand.\",\n",
    );
    let trained: Vec<String> = data.trained_on.iter().map(|t| quote(t)).collect();
    out.push_str(&format!("  \"trained_on\": [{}],\n", trained.join(", ")));
    out.push_str(&format!("  \"documents\": {},\n", counts(&data.documents)));
    out.push_str(&format!(
        "  \"median_features\": {},\n  \"features\": {{",
        data.median_features
    ));
    let mut first = true;
    for (f, c) in &data.features {
        out.push_str(if first { "\n" } else { ",\n" });
        first = false;
        out.push_str(&format!("    {}: {}", quote(f), counts(c)));
    }
    out.push_str("\n  }\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_statements_win() {
        assert_eq!(
            explicit_type("This is an Effect node."),
            Some(NodeType::Effect)
        );
        assert_eq!(explicit_type("Node type: Reducer"), Some(NodeType::Reducer));
        assert_eq!(explicit_type("type: compute"), Some(NodeType::Compute));
        assert_eq!(explicit_type("the node types we build"), None);
        assert!(
            model()
                .classify("aggregate everything. This is an orchestrator node")
                .explicit
        );
    }

    #[test]
    fn features_skip_negations_and_non_goals() {
        let f = features(
            "Writes orders, never recalculates prices.\n## Non-Goals\n- Aggregation\n## Notes\nKeeps state",
        );
        assert!(f.contains("writes") && f.contains("orders") && f.contains("keeps"));
        assert!(!f.contains("recalc") && !f.contains("aggreg") && !f.contains("prices"));
    }

    #[test]
    fn the_embedded_model_classifies_plain_descriptions() {
        let m = model();
        assert_eq!(
            m.classify("Calculate the price from the tariff table and return the result")
                .node_type,
            NodeType::Compute
        );
        assert_eq!(
            m.classify("Aggregate daily totals from the event stream into a running summary")
                .node_type,
            NodeType::Reducer
        );
        assert_eq!(m.classify("Coordinate the workflow: call each service in order, wait for replies, compensate on failure").node_type, NodeType::Orchestrator);
        assert_eq!(
            m.classify("Aggregates daily sales totals.").node_type,
            NodeType::Reducer
        );
        assert_eq!(
            m.classify("Calculates a price score.").node_type,
            NodeType::Compute
        );
    }
}
