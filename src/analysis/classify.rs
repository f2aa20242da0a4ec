//! Node-type classification: which of the four ONEX types a piece of PRD text describes.
//!
//! An explicit statement ("this is an effect node", "type: compute") wins. Otherwise indicator
//! words from the pattern library are counted, weighted by where they stand (the title and
//! overview say what a thing *is*; dependencies say little).

use crate::api::NodeType;
use crate::naming::words;

use super::keyword_hits;
use super::library::Library;

/// Text of one unit to classify, split by how much each part says about the type.
#[derive(Default)]
pub struct WeightedText<'a> {
    pub parts: Vec<(&'a str, f64)>,
}

impl<'a> WeightedText<'a> {
    pub fn push(&mut self, text: &'a str, weight: f64) {
        self.parts.push((text, weight));
    }
}

/// The classification of one unit.
#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    pub node_type: NodeType,
    /// Share of the winning type in the total evidence (1.0 for explicit statements).
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

/// Classify weighted text with the library's indicator words.
pub fn classify(text: &WeightedText<'_>, lib: &Library) -> Classification {
    for (part, _) in &text.parts {
        if let Some(t) = explicit_type(part) {
            return Classification {
                node_type: t,
                confidence: 1.0,
                explicit: true,
            };
        }
    }
    let mut scores = [0.0f64; 4];
    for (part, weight) in &text.parts {
        // Each line is one requirement or paragraph; its leading word is usually the verb that
        // says what the component does, so it counts double.
        for line in part.lines() {
            let words = words(line);
            let joined = format!(" {} ", words.join(" "));
            for (i, t) in NodeType::ALL.iter().enumerate() {
                let p = lib.patterns(*t);
                for (list, points) in [(&p.strong, 2.0), (&p.weak, 1.0)] {
                    for indicator in list {
                        let hits = keyword_hits(&words, &joined, indicator) as f64;
                        let lead = words.first().is_some_and(|w| {
                            keyword_hits(std::slice::from_ref(w), &format!(" {w} "), indicator) > 0
                        });
                        scores[i] += points * weight * (hits + if lead { 1.0 } else { 0.0 });
                    }
                }
            }
        }
    }
    let total: f64 = scores.iter().sum();
    // Ties and no evidence resolve to the earliest type in ALL order (Effect), deterministically.
    let (best, best_score) =
        scores.iter().enumerate().fold(
            (0usize, f64::MIN),
            |acc, (i, s)| if *s > acc.1 { (i, *s) } else { acc },
        );
    let confidence = if total > 0.0 { best_score / total } else { 0.0 };
    Classification {
        node_type: NodeType::ALL[best],
        confidence: (confidence * 100.0).round() / 100.0,
        explicit: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::library::library;

    fn one(text: &str) -> Classification {
        let mut w = WeightedText::default();
        w.push(text, 1.0);
        classify(&w, library())
    }

    #[test]
    fn explicit_statements_win() {
        assert_eq!(
            explicit_type("This is an Effect node."),
            Some(NodeType::Effect)
        );
        assert_eq!(explicit_type("Node type: Reducer"), Some(NodeType::Reducer));
        assert_eq!(explicit_type("type: compute"), Some(NodeType::Compute));
        assert_eq!(explicit_type("the node types we build"), None);
        assert!(one("aggregate everything. This is an orchestrator node").explicit);
    }

    #[test]
    fn indicator_words_decide() {
        assert_eq!(
            one("Write orders to PostgreSQL and send emails").node_type,
            NodeType::Effect
        );
        assert_eq!(
            one("Calculate prices with a transform algorithm").node_type,
            NodeType::Compute
        );
        assert_eq!(
            one("Aggregate and summarize daily metrics").node_type,
            NodeType::Reducer
        );
        assert_eq!(
            one("Coordinate the order workflow pipeline").node_type,
            NodeType::Orchestrator
        );
    }
}
