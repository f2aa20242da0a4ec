//! Node-type classification measured on a labelled corpus of PRDs that are not the examples:
//! `tests/corpus/classification/<type>/*.md`, the directory being the label.

use omninode_operator::analysis::{Overrides, plan};
use omninode_operator::api::NodeType;
use omninode_operator::prd::parse;

#[test]
fn primary_node_type_accuracy_is_at_least_95_percent() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/classification");
    let (mut total, mut correct) = (0usize, 0usize);
    let mut misses = Vec::new();
    for label in NodeType::ALL {
        let dir = root.join(label.as_str());
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let prd = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let p = plan(
                &prd,
                &Overrides {
                    fallback_name: "corpus",
                    ..Default::default()
                },
                None,
            )
            .unwrap();
            let got = p.nodes[0].node_type;
            total += 1;
            if got == label {
                correct += 1;
            } else {
                misses.push(format!("{}: expected {label}, got {got}", file.display()));
            }
        }
    }
    let accuracy = correct as f64 / total as f64;
    println!(
        "classification accuracy: {correct}/{total} = {:.1}%",
        accuracy * 100.0
    );
    for m in &misses {
        println!("  miss: {m}");
    }
    assert!(total >= 40, "corpus has only {total} PRDs");
    assert!(
        accuracy >= 0.95,
        "accuracy {:.1}% < 95%: {misses:#?}",
        accuracy * 100.0
    );
}
