//! Fuzzing the parsers that read what users and services send (issue 18): the PRD parser, the
//! manifest reader, the escaping filters and the Kafka reply decoder (down to the plan the
//! service's hints shape).
//!
//! Property-based with proptest, on stable Rust: each target mutates a checked-in seed corpus
//! (byte edits, and splices of the tokens its format is made of) and also tries arbitrary input.
//! A crash is a panic or a broken property; proptest shrinks it, and its minimal input belongs in
//! `tests/fuzz/corpus/<target>/` once fixed. Each target runs for `OMNINODE_FUZZ_SECONDS`
//! (2 s by default; scripts/test-all.sh gives each 60 s).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use omninode_operator::api::NodeGenerationSpec;
use omninode_operator::intelligence::advisor;
use omninode_operator::intelligence::wire::{self, CodegenResponse};
use omninode_operator::manifest::{self, Entry};
use omninode_operator::render::{Renderer, filters};
use omninode_operator::{pipeline, prd};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One edit of a seed.
#[derive(Clone, Debug)]
enum Edit {
    Insert(Index, Vec<u8>),
    Token(Index, Index),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Flip(Index, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Edit::Token(i, t)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<Index>(), 1usize..256).prop_map(|(i, n)| Edit::Duplicate(i, n)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit], tokens: &[&str]) -> Vec<u8> {
    for e in edits {
        let at = |i: &Index| i.index(bytes.len() + 1);
        match e {
            Edit::Insert(i, b) => {
                let at = at(i);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Token(i, t) => {
                let at = at(i);
                let token = tokens[t.index(tokens.len())].as_bytes();
                bytes.splice(at..at, token.iter().copied());
            }
            Edit::Delete(i, n) => {
                let at = at(i).min(bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Edit::Duplicate(i, n) => {
                let at = at(i).min(bytes.len());
                let end = (at + n).min(bytes.len());
                let copy: Vec<u8> = bytes[at..end].to_vec();
                bytes.splice(end..end, copy);
            }
            Edit::Flip(i, b) => {
                if !bytes.is_empty() {
                    let at = i.index(bytes.len());
                    bytes[at] ^= b | 1;
                }
            }
        }
    }
    bytes
}

/// Inputs of a target: a seed with up to 12 edits, or arbitrary bytes.
fn inputs(seeds: Vec<Vec<u8>>, tokens: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    assert!(!seeds.is_empty(), "no seeds");
    let mutated = (0..seeds.len(), prop::collection::vec(edit(), 0..12))
        .prop_map(move |(i, edits)| apply(seeds[i].clone(), &edits, tokens));
    prop_oneof![
        8 => mutated,
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
    .boxed()
}

/// Files under `dir` (recursively) whose name ends with one of `suffixes`.
fn files(dir: &Path, suffixes: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path, suffixes));
        } else if suffixes.iter().any(|s| path.to_string_lossy().ends_with(s)) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The seeds of `target`: its own corpus (crashes found, hand-picked cases) and `extra` files.
fn seeds(target: &str, extra: &[PathBuf]) -> Vec<Vec<u8>> {
    let own = files(
        &Path::new(ROOT).join("tests/fuzz/corpus").join(target),
        &[""],
    );
    own.iter()
        .chain(extra)
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// Run `property` on inputs from `strategy` until the time budget is spent.
fn fuzz<T: std::fmt::Debug>(
    target: &str,
    strategy: impl Strategy<Value = T>,
    property: impl Fn(T) -> Result<(), TestCaseError>,
) {
    let seconds: u64 = std::env::var("OMNINODE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut cases = 0u64;
    while Instant::now() < deadline {
        let config = Config {
            cases: 128,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
                "tests/fuzz/regressions.txt",
            ))),
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        if let Err(e) = runner.run(&strategy, &property) {
            panic!(
                "fuzz target {target}: {e}\nadd the minimal input to tests/fuzz/corpus/{target}/ once fixed"
            );
        }
        cases += 128;
    }
    println!("fuzz {target}: {cases} cases in {seconds} s, 0 crashes");
}

const MARKDOWN: &[&str] = &[
    "\n# ",
    "\n## ",
    "\n### ",
    "\n- ",
    "\n* ",
    "\n1. ",
    "\n```\n",
    "\n| a | b |\n|---|---|\n",
    "Uses:",
    "Depends on:",
    "\n## Functional Requirements\n",
    "\n## Overview\n",
    "**",
    "`",
    "[x](y)",
    "<!--",
    "-->",
    "\u{202e}",
    "\u{200b}",
    "\0",
    "\r\n",
    "\t",
    "    ",
    "> ",
    "\n## Data Model\n",
    "\n## Operations\n",
    "Kafka",
    "PostgreSQL",
    "aggregate",
    "orchestrate",
];

const YAML: &[&str] = &[
    "---\n",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!binary ",
    "!!python/object ",
    "{",
    "}",
    "[",
    "]",
    ": ",
    "- ",
    "prd: |\n  ",
    "prdFrom:\n  configMapKeyRef:\n    name: x\n    key: y\n",
    "kind: NodeGeneration\n",
    "metadata:\n  name: ",
    "spec:\n",
    "\"",
    "'",
    "#",
    "~",
    "null",
    "1e400",
    "-0",
    "0x10",
    "\u{feff}",
    "\t",
    "\n  ",
    "? ",
    "|-\n",
    ">\n",
];

const JSON: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "1e999",
    "-0",
    "\"\\ud800\"",
    "\"payload\":",
    "\"correlation_id\":",
    "\"event_type\":",
    "\"analysis_result\":",
    "\"node_type_hints\":[\"effect\",\"orchestrator\"]",
    "\"domain\":\"../x\"",
    "\"operations\":[{\"name\":\"x\"}]",
    "\"mixin_recommendations\":[{\"mixin_name\":\"M\"}]",
    "\"pattern_result\":[{\"pattern_name\":\"p\"}]",
    "\"quality_score\":",
    "\"recommended_mixins\":",
];

#[test]
fn fuzz_prd_parser() {
    let corpus = Path::new(ROOT).join("tests/corpus");
    let strategy = inputs(seeds("prd", &files(&corpus, &[".md"])), MARKDOWN);
    fuzz("prd", strategy, |bytes| {
        let text = String::from_utf8_lossy(&bytes);
        let normal = prd::normalize(&text);
        prop_assert_eq!(
            prd::normalize(&normal),
            normal.clone(),
            "normalize is not idempotent"
        );
        match prd::parse(&text) {
            Ok(p) => prop_assert!(p.title.as_deref().is_none_or(|t| !t.contains('\n'))),
            Err(e) => prop_assert!(!e.reason().is_empty() && !e.to_string().is_empty()),
        }
        Ok(())
    });
}

#[test]
fn fuzz_manifest_reader() {
    let examples = files(&Path::new(ROOT).join("examples"), &[".yaml"]);
    let strategy = inputs(seeds("manifest", &examples), YAML);
    fuzz("manifest", strategy, |bytes| {
        for path in ["fuzz.yaml", "fuzz.md"] {
            for entry in manifest::read_input(path, &bytes) {
                match entry {
                    Entry::Generation { name, .. } => {
                        prop_assert!(
                            manifest::valid_name(&name),
                            "invalid name {name:?} accepted"
                        )
                    }
                    Entry::Rejected { rejected, .. } => {
                        prop_assert!(!rejected.reason.is_empty() && !rejected.message.is_empty())
                    }
                }
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_escaping_filters() {
    let mut texts = seeds("filters", &[]);
    texts.extend(MARKDOWN.iter().chain(YAML).map(|t| t.as_bytes().to_vec()));
    let strategy = prop_oneof![
        inputs(texts, MARKDOWN),
        any::<String>().prop_map(String::into_bytes),
    ];
    fuzz("filters", strategy, |bytes| {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // `quote` means the same string in YAML and in Python.
        let quoted = filters::quote(&text);
        prop_assert!(quoted.is_ascii());
        let yaml: String = serde_norway::from_str(&quoted)
            .map_err(|e| TestCaseError::fail(format!("YAML rejects {quoted}: {e}")))?;
        prop_assert_eq!(&yaml, &text);
        let python = python_string(&format!("x = {quoted}\n"))?;
        prop_assert_eq!(&python, &text);
        // `doc` stays inside its docstring, `comment` on its line.
        let doc = filters::doc(&text);
        python_string(&format!("\"\"\"{doc}\"\"\"\n"))?;
        let comment = filters::comment(&text);
        prop_assert!(!comment.contains(['\n', '\r']));
        let module = format!("x = 1  # {comment}\ny = 2\n");
        let parsed = ruff_python_parser::parse_module(&module)
            .map_err(|e| TestCaseError::fail(format!("{module:?}: {e}")))?;
        prop_assert_eq!(parsed.syntax().body.len(), 2);
        // A wrapped literal is still the same words.
        let wrapped = filters::wrap_quoted(&quoted, 40);
        prop_assert!(wrapped.lines().all(|l| l.len() <= 40 || !l.contains(' ')));
        Ok(())
    });
}

/// Well-formed replies whose hints hold arbitrary text: what a hostile or broken service could
/// put into the plan.
fn hostile_replies() -> BoxedStrategy<Vec<u8>> {
    let text = || prop_oneof![any::<String>(), "[a-z_]{0,12}", Just(String::new())];
    let operation = (text(), text()).prop_map(
        |(name, description)| serde_json::json!({"name": name, "description": description}),
    );
    (
        prop::collection::vec(prop_oneof![text(), Just("orchestrator".to_string())], 0..4),
        prop::collection::vec(text(), 0..4),
        prop::option::of(text()),
        prop::collection::vec(operation, 0..6),
        prop::collection::vec(text(), 0..3),
    )
        .prop_map(|(types, mixins, domain, operations, patterns)| {
            let patterns: Vec<_> = patterns
                .into_iter()
                .map(|p| serde_json::json!({"pattern_name": p}))
                .collect();
            serde_json::json!({
                "correlation_id": "c",
                "analysis_result": {
                    "node_type_hints": types,
                    "recommended_mixins": mixins,
                    "domain": domain,
                    "operations": operations,
                },
                "pattern_result": patterns,
            })
            .to_string()
            .into_bytes()
        })
        .boxed()
}

/// The value of the string assigned in a one-statement Python module.
fn python_string(module: &str) -> Result<String, TestCaseError> {
    use ruff_python_ast::{Expr, Stmt};
    let parsed = ruff_python_parser::parse_module(module)
        .map_err(|e| TestCaseError::fail(format!("Python rejects {module:?}: {e}")))?;
    let value = match parsed.syntax().body.first() {
        Some(Stmt::Assign(a)) => a.value.as_ref(),
        Some(Stmt::Expr(e)) => e.value.as_ref(),
        other => return Err(TestCaseError::fail(format!("{module:?} is {other:?}"))),
    };
    match value {
        Expr::StringLiteral(s) => Ok(s.value.to_str().to_string()),
        other => Err(TestCaseError::fail(format!("{module:?} holds {other:?}"))),
    }
}

#[test]
fn fuzz_kafka_reply_decoder() {
    let renderer = Renderer::embedded().expect("the embedded templates load");
    let spec = NodeGenerationSpec::default();
    let prd_text = std::fs::read_to_string(Path::new(ROOT).join("tests/fuzz/reply-prd.md"))
        .expect("tests/fuzz/reply-prd.md");
    let strategy = prop_oneof![inputs(seeds("reply", &[]), JSON), hostile_replies()];
    let planned = AtomicU64::new(0);
    fuzz("reply", strategy, |bytes| {
        let Ok(reply) = wire::decode_reply(Some(&bytes)) else {
            return Ok(());
        };
        planned.fetch_add(1, Ordering::Relaxed);
        // What the client does with a codegen reply, then the plan and the files it shapes.
        let response: CodegenResponse = serde_json::from_value(reply.body).unwrap_or_default();
        let hints = advisor::hints(&response, Some(&response), Some(&response));
        let outcome = pipeline::run(
            &renderer,
            "fuzz",
            &spec,
            &prd_text,
            "cid".into(),
            Some(&hints),
        );
        if let Some(f) = &outcome.failure {
            prop_assert!(!f.reason.is_empty() && !f.message.is_empty());
        }
        // Whatever the service said, the code it shaped still parses: its text never escapes
        // the literals, docstrings and comments the filters put it in.
        for node in &outcome.nodes {
            prop_assert!(
                node.report.parses,
                "{} does not parse: {:?}",
                node.name,
                node.report.deductions
            );
        }
        Ok(())
    });
    println!(
        "fuzz reply: {} decoded replies went through the plan and the templates",
        planned.load(Ordering::Relaxed)
    );
}
