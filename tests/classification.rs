//! Node-type classification measured on labelled PRDs that are not the examples:
//! `tests/corpus/<corpus>/<type>/*.md`, the directory being the label.
//!
//! The embedded model is trained on `classification` and `classification_train`; the two
//! holdout corpora were written afterwards by authors who never saw the classifier, and are
//! never trained on. The gate is on the holdouts.

use std::path::Path;

use omninode_operator::analysis::{embedded_model_data, model, model_json};
use omninode_operator::training::{load_corpus, train_on};

const TRAINED_ON: [&str; 2] = [
    "tests/corpus/classification",
    "tests/corpus/classification_train",
];
const HOLDOUTS: [&str; 2] = [
    "tests/corpus/classification_holdout",
    "tests/corpus/classification_holdout2",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// (correct, total) over one corpus, printing the misses.
fn measure(corpus: &str) -> (usize, usize) {
    let docs = load_corpus(&root().join(corpus)).unwrap();
    let mut correct = 0;
    for (i, (label, text)) in docs.iter().enumerate() {
        let got = model().classify(text);
        if got.node_type == *label {
            correct += 1;
        } else {
            println!(
                "  miss in {corpus} (#{i}): expected {label}, got {} ({:.2})",
                got.node_type, got.confidence
            );
        }
    }
    println!(
        "{corpus}: primary node type accuracy {correct}/{} = {:.1}%",
        docs.len(),
        100.0 * correct as f64 / docs.len() as f64
    );
    (correct, docs.len())
}

#[test]
fn primary_node_type_accuracy_on_unseen_prds_is_at_least_95_percent() {
    for corpus in TRAINED_ON {
        measure(corpus);
    }
    let (mut correct, mut total) = (0, 0);
    for corpus in HOLDOUTS {
        let (c, t) = measure(corpus);
        correct += c;
        total += t;
    }
    let accuracy = correct as f64 / total as f64;
    println!(
        "holdouts combined (never trained on): {correct}/{total} = {:.1}%",
        accuracy * 100.0
    );
    assert!(total >= 40, "holdouts have only {total} PRDs");
    assert!(accuracy >= 0.95, "accuracy {:.1}% < 95%", accuracy * 100.0);
}

#[test]
fn embedded_model_is_reproducible_from_the_committed_corpora() {
    let dirs: Vec<_> = TRAINED_ON.iter().map(|d| root().join(d)).collect();
    let refs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let trained = train_on(&refs, TRAINED_ON.iter().map(|s| s.to_string()).collect()).unwrap();
    let embedded = embedded_model_data().unwrap();
    assert_eq!(
        model_json(&trained),
        model_json(&embedded),
        "src/analysis/classifier_model.json is stale: run `omninode-operator train-classifier {} -o src/analysis/classifier_model.json`",
        TRAINED_ON.join(" ")
    );
}
