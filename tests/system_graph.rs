//! The system graph measured on labelled multi-node PRDs (`tests/corpus/systems`, labels in
//! its `expected.yaml`, written without sight of the graph code), and the invalid ones
//! (`tests/corpus/systems-invalid`) that must fail with a reason naming the nodes.
//!
//! `cargo test --test system_graph -- --nocapture` prints the figures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use omninode_operator::analysis::{Overrides, plan};
use omninode_operator::prd::parse;

/// Share of edges that must be right: |predicted ∩ labelled| / |predicted ∪ labelled|.
const GOAL: f64 = 0.9;

#[derive(serde::Deserialize)]
struct Valid {
    nodes: Vec<String>,
    edges: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Invalid {
    reason: String,
    nodes: Vec<String>,
}

fn corpus(dir: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir)
}

fn overrides() -> Overrides<'static> {
    Overrides {
        fallback_name: "corpus",
        ..Default::default()
    }
}

fn edge(text: &str) -> (String, String) {
    let (a, b) = text.split_once("->").expect("an edge is `A -> B`");
    (a.trim().to_string(), b.trim().to_string())
}

/// (PRDs, right, union, predicted, labelled) edge counts over one labelled corpus, printing
/// the misses.
fn measure(name: &str) -> (usize, usize, usize, usize, usize) {
    let dir = corpus(name);
    let expected: BTreeMap<String, Valid> =
        serde_norway::from_slice(&std::fs::read(dir.join("expected.yaml")).unwrap()).unwrap();
    let (mut right, mut predicted_total, mut labelled_total, mut union) = (0, 0, 0, 0);
    for (file, label) in &expected {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let p = plan(&parse(&text).unwrap(), &overrides(), None)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let g = p
            .system
            .unwrap_or_else(|| panic!("{file}: no system graph"));
        assert_eq!(g.nodes, label.nodes, "{file}: nodes");
        let predicted: BTreeSet<(String, String)> = g
            .edges
            .iter()
            .map(|(a, b)| (g.nodes[*a].clone(), g.nodes[*b].clone()))
            .collect();
        let labelled: BTreeSet<(String, String)> = label.edges.iter().map(|e| edge(e)).collect();
        for (a, b) in predicted.difference(&labelled) {
            println!("  {file}: extra   {a} -> {b}");
        }
        for (a, b) in labelled.difference(&predicted) {
            println!("  {file}: missing {a} -> {b}");
        }
        right += predicted.intersection(&labelled).count();
        union += predicted.union(&labelled).count();
        predicted_total += predicted.len();
        labelled_total += labelled.len();
    }
    let share = right as f64 / union as f64;
    println!(
        "system graph on {name} ({} PRDs): {right} of {union} edges right ({:.1} %); precision {:.1} % ({right}/{predicted_total}), recall {:.1} % ({right}/{labelled_total})",
        expected.len(),
        share * 100.0,
        right as f64 * 100.0 / predicted_total as f64,
        right as f64 * 100.0 / labelled_total as f64,
    );
    (
        expected.len(),
        right,
        union,
        predicted_total,
        labelled_total,
    )
}

/// The gate is on the corpora the graph's rules were tuned on, together: `systems` (28 PRDs),
/// `systems_holdout` (14) and `systems_fresh` (12), each written by an author who saw neither
/// the rules nor the earlier corpora, and each tuned on after its first-contact figure was
/// taken (see their READMEs). Each figure is printed on its own.
#[test]
fn edges_of_the_labelled_corpora_are_right() {
    let (mut prds, mut right, mut union) = (0, 0, 0);
    for name in ["systems", "systems_holdout", "systems_fresh"] {
        let (n, r, u, _, _) = measure(name);
        prds += n;
        right += r;
        union += u;
    }
    assert!(prds >= 20, "the corpora have {prds} PRDs");
    let share = right as f64 / union as f64;
    println!(
        "system graph on both ({prds} PRDs): {right} of {union} edges right ({:.1} %)",
        share * 100.0
    );
    assert!(share >= GOAL, "{:.1} % of edges right", share * 100.0);
}

/// Share of edges that must stay right on `systems_fresh2`, from which no rule was written (it
/// was used once to choose among rules): its figure then (54.1 %), rounded down, so
/// generalisation cannot quietly get worse.
const FRESH_FLOOR: f64 = 0.54;

/// `systems_fresh2` (12 PRDs written after the rules, by an author who never saw the code)
/// measures how the graph generalises; see its README.
#[test]
fn edges_of_a_fresh_corpus_no_rule_was_tuned_on() {
    let (prds, right, union, _, _) = measure("systems_fresh2");
    assert!(prds >= 10, "systems_fresh2 has {prds} PRDs");
    let share = right as f64 / union as f64;
    assert!(
        share >= FRESH_FLOOR,
        "{:.1} % of edges right on systems_fresh2",
        share * 100.0
    );
}

#[test]
fn invalid_systems_fail_with_a_reason_naming_the_nodes() {
    let dir = corpus("systems-invalid");
    let expected: BTreeMap<String, Invalid> =
        serde_norway::from_slice(&std::fs::read(dir.join("expected.yaml")).unwrap()).unwrap();
    assert!(expected.len() >= 6);
    for (file, label) in &expected {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let err = match plan(&parse(&text).unwrap(), &overrides(), None) {
            Ok(_) => panic!("{file}: planned, expected {}", label.reason),
            Err(e) => e,
        };
        assert_eq!(err.reason(), label.reason, "{file}: {err}");
        let message = err.to_string();
        for node in &label.nodes {
            assert!(
                message.contains(node.as_str()),
                "{file}: {message:?} does not name {node:?}"
            );
        }
        println!("  {file}: {} — {message}", err.reason());
    }
}

/// The status says which edges were guessed from the prose and which a wiring line declared.
#[test]
fn the_status_shows_which_edges_are_guesses() {
    use omninode_operator::api::{NodeGenerationSpec, NodeGenerationStatus};
    use omninode_operator::render::Renderer;
    let prd = "# Checkout\n\n## Overview\nTakes orders.\n\n## Nodes\n\n\
               ### Stock Reservation\nReserves stock for an order in PostgreSQL.\n\n\
               ### Payment Capture\nCaptures the payment with the card provider.\n\
               Uses: Stock Reservation\n\n\
               ### Checkout Workflow\nReserves the stock, then captures the payment.\n";
    let renderer = Renderer::embedded().unwrap();
    let outcome = omninode_operator::pipeline::run(
        &renderer,
        "checkout",
        &NodeGenerationSpec::default(),
        prd,
        "c".into(),
        None,
    );
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let mut status = NodeGenerationStatus::default();
    outcome.fill_status(&mut status);
    let system = status.system.unwrap();
    let of = |title: &str| system.nodes.iter().find(|n| n.title == title).unwrap();
    let payment = of("Payment Capture");
    assert_eq!(payment.uses.len(), 1);
    assert!(payment.guessed.is_empty(), "a wiring line is no guess");
    let workflow = of("Checkout Workflow");
    assert_eq!(workflow.uses.len(), 2);
    assert_eq!(workflow.guessed, workflow.uses, "read from the prose");
}
