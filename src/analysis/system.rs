//! The system graph of a multi-node PRD: which node uses which.
//!
//! An edge `a → b` means node `a` uses node `b`: it sends `b` commands as workflow steps, or
//! folds `b`'s results, or needs them. The graph must be a DAG, because it is also the rollout
//! order (a node's dependencies are Ready before it is) and the workflow's step order.
//!
//! Edges come from two places:
//! - **wiring lines** (`Uses: A, B`, `Depends on: C`) of a node's subsection: they must name
//!   nodes of the PRD, and a cycle among them is the PRD's error;
//! - **the prose**: a node uses another when its text holds every significant word of the
//!   other's name, compared by stem ("captures the payment" finds "Payment Capture"). An
//!   orchestrator whose prose names no sibling coordinates all the others. A prose edge that
//!   would close a cycle is dropped: it is a guess, and guesses must not fail a PRD.

use std::collections::BTreeSet;

use rust_stemmers::{Algorithm, Stemmer};

use crate::api::NodeType;
use crate::naming;
use crate::prd::Component;

/// Words that never identify a node: articles, and what every node is.
const FILLER: &[&str] = &["a", "an", "the", "of", "and", "for", "node", "service"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemGraph {
    /// Node names (the component headings), in PRD order.
    pub nodes: Vec<String>,
    /// `(user, used)` index pairs, sorted, unique.
    pub edges: Vec<(usize, usize)>,
    /// The edges of wiring lines (`Uses:`, `Depends on:`); the others were read from the prose,
    /// a guess the status shows as such.
    pub declared: Vec<(usize, usize)>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SystemError {
    #[error("node {node:?} uses {reference:?}, which is not a node of this PRD (nodes: {known})")]
    UnknownReference {
        node: String,
        reference: String,
        known: String,
    },
    #[error("the nodes depend on each other in a circle: {}", cycle_text(.0))]
    Cycle(Vec<String>),
}

fn cycle_text(cycle: &[String]) -> String {
    let mut parts: Vec<&str> = cycle.iter().map(String::as_str).collect();
    if let Some(first) = cycle.first() {
        parts.push(first);
    }
    parts.join(" -> ")
}

impl SystemGraph {
    /// Whether edge `(from, to)` was read from the prose rather than a wiring line.
    pub fn guessed(&self, from: usize, to: usize) -> bool {
        self.edges.binary_search(&(from, to)).is_ok()
            && self.declared.binary_search(&(from, to)).is_err()
    }

    /// The nodes `node` uses directly, in PRD order.
    pub fn uses(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        self.edges
            .iter()
            .filter(move |(from, _)| *from == node)
            .map(|(_, to)| *to)
    }

    /// Whether `to` is reachable from `from` along edges (a node reaches itself).
    pub fn reaches(&self, from: usize, to: usize) -> bool {
        let mut stack = vec![from];
        let mut seen = BTreeSet::new();
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n) {
                stack.extend(self.uses(n));
            }
        }
        false
    }

    /// Every node after the nodes it uses; ties keep PRD order.
    pub fn dependency_order(&self) -> Vec<usize> {
        let mut placed = BTreeSet::new();
        let mut order = Vec::with_capacity(self.nodes.len());
        while order.len() < self.nodes.len() {
            let next = (0..self.nodes.len())
                .find(|n| !placed.contains(n) && self.uses(*n).all(|d| placed.contains(&d)));
            // A DAG always has a next node; stop rather than loop if it were not one.
            let Some(n) = next else { break };
            placed.insert(n);
            order.push(n);
        }
        order
    }

    fn add(&mut self, from: usize, to: usize) {
        if let Err(at) = self.edges.binary_search(&(from, to)) {
            self.edges.insert(at, (from, to));
        }
    }

    /// A cycle through the edges, as node indices, if there is one.
    fn find_cycle(&self) -> Option<Vec<usize>> {
        // Colours: 0 unvisited, 1 on the current path, 2 done.
        fn visit(g: &SystemGraph, n: usize, colour: &mut [u8], path: &mut Vec<usize>) -> bool {
            colour[n] = 1;
            path.push(n);
            for d in g.uses(n) {
                if colour[d] == 1 {
                    let start = path.iter().position(|p| *p == d).unwrap_or(0);
                    path.drain(..start);
                    return true;
                }
                if colour[d] == 0 && visit(g, d, colour, path) {
                    return true;
                }
            }
            path.pop();
            colour[n] = 2;
            false
        }
        let mut colour = vec![0u8; self.nodes.len()];
        for n in 0..self.nodes.len() {
            let mut path = Vec::new();
            if colour[n] == 0 && visit(self, n, &mut colour, &mut path) {
                return Some(path);
            }
        }
        None
    }
}

/// The graph of `components`, whose node types are `types` (same order).
pub fn graph(components: &[Component], types: &[NodeType]) -> Result<SystemGraph, SystemError> {
    let stemmer = Stemmer::create(Algorithm::English);
    let names: Vec<BTreeSet<String>> = components
        .iter()
        .map(|c| significant_stems(&stemmer, &c.name))
        .collect();
    let phrases: Vec<Vec<String>> = components
        .iter()
        .map(|c| {
            significant_words(&c.name)
                .iter()
                .map(|w| stemmer.stem(w).into_owned())
                .collect()
        })
        .collect();
    let partials: Vec<Vec<Vec<String>>> = (0..phrases.len())
        .map(|n| partial_phrases(&phrases, n))
        .collect();
    // A wiring line names a node as written (any case, with or without "node"/"the"): a typo is
    // an unknown node, not a guess.
    let spelled: Vec<Vec<String>> = components
        .iter()
        .map(|c| significant_words(&c.name))
        .collect();
    let mut g = SystemGraph {
        nodes: components.iter().map(|c| c.name.clone()).collect(),
        edges: Vec::new(),
        declared: Vec::new(),
    };

    for (from, component) in components.iter().enumerate() {
        for reference in &component.uses {
            let wanted = significant_words(reference);
            let found = spelled
                .iter()
                .position(|n| !wanted.is_empty() && *n == wanted);
            let Some(to) = found else {
                return Err(SystemError::UnknownReference {
                    node: component.name.clone(),
                    reference: reference.clone(),
                    known: g.nodes.join(", "),
                });
            };
            g.add(from, to);
        }
    }
    if let Some(cycle) = g.find_cycle() {
        return Err(SystemError::Cycle(
            cycle.into_iter().map(|n| g.nodes[n].clone()).collect(),
        ));
    }
    g.declared = g.edges.clone();

    // Prose edges, coordinators first: they are the likeliest users.
    let coordinator = coordinators(components, types);
    let is_reducer = |n: usize| types.get(n) == Some(&NodeType::Reducer);
    let mut users: Vec<usize> = (0..components.len()).collect();
    users.sort_by_key(|n| !coordinator[*n]);
    for &from in &users {
        let sentences = sentence_stems(&stemmer, &components[from]);
        for (to, name) in names.iter().enumerate() {
            if to == from || name.is_empty() {
                continue;
            }
            // A coordinator is used by what folds its events (a reducer), or by another
            // coordinator that names it.
            if coordinator[to] && !is_reducer(from) && !coordinator[from] {
                continue;
            }
            // Coordinators describe their steps in their own words (not other coordinators).
            // (Not a reducer: one it describes is more often fed by its events than a step.)
            let describes = coordinator[from] && !coordinator[to] && !is_reducer(to);
            let target = Target {
                name,
                phrase: &phrases[to],
                partials: &partials[to],
            };
            let Some(reverse) = mention(&sentences, &target, coordinator[from], describes) else {
                continue;
            };
            let flip = !coordinator[from] && !coordinator[to];
            let (user, used) = if flip && reverse {
                (to, from)
            } else {
                (from, to)
            };
            if !g.reaches(used, user) {
                g.add(user, used);
            }
        }
    }
    // The one coordinator, if its prose names no sibling, coordinates all of them, except
    // reducers already fed by another node. (Of several, one that names none is no hub.)
    let hubs: Vec<usize> = (0..components.len()).filter(|n| coordinator[*n]).collect();
    // A node that nothing else touches is one of its steps, described too loosely to find.
    for &from in hubs.iter().filter(|_| hubs.len() == 1) {
        let silent = g.uses(from).next().is_none();
        for (to, &hub) in coordinator.iter().enumerate() {
            let fed = is_reducer(to) && g.uses(to).next().is_some();
            let isolated = !g.edges.iter().any(|(a, b)| *a == to || *b == to);
            if to != from && !hub && !fed && (silent || isolated) && !g.reaches(to, from) {
                g.add(from, to);
            }
        }
    }
    Ok(g)
}

/// Words of a node name that make it the system's coordinator.
const COORDINATOR_WORDS: &[&str] = &[
    "workflow",
    "orchestrator",
    "orchestration",
    "saga",
    "pipeline",
    "flow",
    "coordinator",
];
/// Words that do only for an Orchestrator ("Staged Rollout Controller", not "Valve Controller").
const ORCHESTRATOR_WORDS: &[&str] = &["controller", "scheduler", "planner", "manager"];

/// Which nodes coordinate the others: those named so ("Payout Workflow"), or else the
/// Orchestrators.
fn coordinators(components: &[Component], types: &[NodeType]) -> Vec<bool> {
    let named: Vec<bool> = components
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let orchestrator = types.get(n) == Some(&NodeType::Orchestrator);
            naming::words(&c.name).iter().any(|w| {
                COORDINATOR_WORDS.contains(&w.as_str())
                    || (orchestrator && ORCHESTRATOR_WORDS.contains(&w.as_str()))
            })
        })
        .collect();
    if named.iter().any(|n| *n) {
        return named;
    }
    (0..components.len())
        .map(|n| types.get(n) == Some(&NodeType::Orchestrator))
        .collect()
}

/// Words before a node's name that make the mentioning node its producer, not its user
/// ("publishes each reading to the Usage Rollup", "consumed by the Fraud Scorer").
const FEEDS_WORDS: &[&str] = &["to", "into", "feeds", "feed", "for"];
/// Stems of words right after a node's name that make it the user of the mentioning node
/// ("the Demand Velocity Tracker subscribes to these", "…, its main consumer").
const USES_AFTER: &[&str] = &["subscrib", "consum", "read", "aggreg", "fold", "listen"];

/// A node as other nodes' sentences may refer to it.
struct Target<'a> {
    /// The stems of its name.
    name: &'a BTreeSet<String>,
    /// Its name's stems in order.
    phrase: &'a [String],
    /// Shorter runs of its name that still say which node ([`partial_phrases`]).
    partials: &'a [Vec<String>],
}

/// Runs of at least two consecutive stems of node `n`'s name, at least half of it, that are
/// not all role words and appear in no other node's name: "due date calculation" still names
/// "Vaccine Due Date Calculator", "hold notice" names "Hold Notice Sender". Longest first.
fn partial_phrases(phrases: &[Vec<String>], n: usize) -> Vec<Vec<String>> {
    let phrase = &phrases[n];
    let mut out = Vec::new();
    for len in (2..phrase.len()).rev() {
        if 2 * len < phrase.len() {
            break;
        }
        for run in phrase.windows(len) {
            let generic = run.iter().all(|w| GENERIC_STEMS.contains(&w.as_str()));
            let shared = phrases
                .iter()
                .enumerate()
                .any(|(other, p)| other != n && p.windows(len).any(|w| w == run));
            if !generic && !shared {
                out.push(run.to_vec());
            }
        }
    }
    out
}

/// Whether a component's sentences mention the node `target`, and if so whether the mention
/// says the component feeds that node (`Some(true)`).
///
/// A sentence mentions a node when it holds every stem of the node's name; a coordinator's
/// sentence also when it holds the name's first stem as a verb or object of a step ("books the
/// flight" for "Flight Booking" needs both; "screens each payment" for "Sanctions Screening"
/// needs one that is not a filler of every node name). A sentence also mentions it by a run of
/// its name that no other name has ([`partial_phrases`]).
fn mention(
    sentences: &[Vec<String>],
    target: &Target,
    coordinator: bool,
    describes: bool,
) -> Option<bool> {
    let (name, phrase) = (target.name, target.phrase);
    for words in sentences {
        let stems: BTreeSet<&str> = words.iter().map(String::as_str).collect();
        let position = |run: &[String]| words.windows(run.len().max(1)).position(|w| w == run);
        // A worker names a node by its name, words in order; a coordinator may describe the
        // step instead ("captures the payment" for "Payment Capture").
        let found = if name.iter().all(|n| stems.contains(n.as_str())) {
            match position(phrase) {
                Some(at) => Some((at, phrase.len())),
                None if coordinator => Some((
                    words.iter().position(|w| name.contains(w)).unwrap_or(0),
                    phrase.len(),
                )),
                None => None,
            }
        } else {
            None
        };
        let found = found.or_else(|| {
            target
                .partials
                .iter()
                .find_map(|run| position(run).map(|at| (at, run.len())))
        });
        let Some((first, len)) = found else {
            continue;
        };
        let before = words[..first].iter().rev().take(2);
        // After a possessive ("the Collector's readings") comes what it owns, not a verb.
        let possessive = words.get(first + len).is_some_and(|w| w == "s");
        let after = words
            .iter()
            .skip(first + len)
            .take(if possessive { 0 } else { 4 });
        let feeds = !coordinator
            && (before
                .into_iter()
                .any(|w| FEEDS_WORDS.contains(&w.as_str()))
                || after
                    .into_iter()
                    .any(|w| USES_AFTER.iter().any(|u| w.starts_with(u))));
        return Some(feeds);
    }
    if describes {
        // A step described in other words: in one sentence, at least half of the name's
        // stems, or words they begin ("signs the build, selects the first cohort" for
        // "Firmware Artifact Signer" and "Cohort Selector"), one of them not a role word.
        let related = |a: &str, b: &str| {
            let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
            a == b || (short.len() >= 4 && long.starts_with(short))
        };
        let described = sentences.iter().any(|words| {
            let found: Vec<&String> = name
                .iter()
                .filter(|n| words.iter().any(|w| related(w, n)))
                .collect();
            3 * found.len() >= name.len()
                && found.iter().any(|n| !GENERIC_STEMS.contains(&n.as_str()))
        });
        if described {
            return Some(false);
        }
    }
    None
}

/// Stems of role words of node names ("Review Queue Writer"): the rest of a name says which.
const GENERIC_STEMS: &[&str] = &[
    "writer",
    "sender",
    "receiv",
    "ingest",
    "publish",
    "collector",
    "loader",
    "calcul",
    "scorer",
    "tracker",
    "rollup",
    "aggreg",
    "check",
    "engin",
    "manag",
    "processor",
    "handler",
    "store",
    "record",
    "event",
    "data",
    "report",
    "request",
    "api",
    "job",
    "runner",
];

/// The words of a node's name that identify it, in order.
fn significant_words(name: &str) -> Vec<String> {
    naming::words(name)
        .into_iter()
        .filter(|w| !FILLER.contains(&w.as_str()))
        .collect()
}

/// The stems of the words of a node's name that identify it.
fn significant_stems(stemmer: &Stemmer, name: &str) -> BTreeSet<String> {
    naming::words(name)
        .iter()
        .filter(|w| !FILLER.contains(&w.as_str()))
        .map(|w| stemmer.stem(w).into_owned())
        .collect()
}

/// Stands between the words of a sentence where punctuation was: a name written in prose is
/// never split by a comma or a parenthesis, so no run of a name may match across it.
const BREAK: &str = "|";

/// The stems of the words of each sentence of a component's description and requirements.
fn sentence_stems(stemmer: &Stemmer, component: &Component) -> Vec<Vec<String>> {
    component
        .paragraphs
        .iter()
        .chain(&component.items)
        .flat_map(|t| t.split(['.', ';', '!', '?']))
        .map(|sentence| {
            let mut words = Vec::new();
            for part in sentence.split([',', '(', ')', ':', '"']) {
                let stems = naming::words(part);
                if !stems.is_empty() && !words.is_empty() {
                    words.push(BREAK.to_string());
                }
                words.extend(stems.iter().map(|w| stemmer.stem(w).into_owned()));
            }
            words
        })
        .filter(|words| !words.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(name: &str, text: &str, uses: &[&str]) -> Component {
        Component {
            name: name.to_string(),
            paragraphs: vec![text.to_string()],
            items: Vec::new(),
            uses: uses.iter().map(|u| u.to_string()).collect(),
        }
    }

    fn edges(g: &SystemGraph) -> Vec<(&str, &str)> {
        g.edges
            .iter()
            .map(|(a, b)| (g.nodes[*a].as_str(), g.nodes[*b].as_str()))
            .collect()
    }

    use NodeType::{Compute, Effect, Orchestrator, Reducer};

    #[test]
    fn prose_names_the_steps_by_stem() {
        let cs = [
            component("Stock Reservation", "Reserves stock.", &[]),
            component("Payment Capture", "Captures payments.", &[]),
            component(
                "Checkout Flow",
                "First reserves the stock, then captures the payment.",
                &[],
            ),
        ];
        let g = graph(&cs, &[Effect, Effect, Orchestrator]).unwrap();
        assert_eq!(
            edges(&g),
            [
                ("Checkout Flow", "Stock Reservation"),
                ("Checkout Flow", "Payment Capture")
            ]
        );
        assert!(g.guessed(2, 0) && g.guessed(2, 1));
        assert_eq!(g.dependency_order(), [0, 1, 2]);
    }

    #[test]
    fn a_run_of_a_name_that_no_other_name_has_still_names_the_node() {
        let cs = [
            component("Vaccine Due Date Calculator", "Works out due dates.", &[]),
            component(
                "Reminder Sender",
                "Gets each due date from the due-date calculation and reminds owners.",
                &[],
            ),
        ];
        let g = graph(&cs, &[Compute, Effect]).unwrap();
        assert_eq!(
            edges(&g),
            [("Reminder Sender", "Vaccine Due Date Calculator")]
        );
    }

    #[test]
    fn punctuation_and_possessives_are_no_part_of_a_name() {
        let cs = [
            component(
                "Review Form",
                "Stores each review (scores for relevance) in PostgreSQL.",
                &[],
            ),
            component("Review Score Tally", "Keeps running totals.", &[]),
            component("Sensor Reading Collector", "Polls sensors.", &[]),
            component(
                "Air Rollup",
                "Averages the Sensor Reading Collector's readings per hour.",
                &[],
            ),
        ];
        let g = graph(&cs, &[Effect, Reducer, Effect, Reducer]).unwrap();
        assert_eq!(edges(&g), [("Air Rollup", "Sensor Reading Collector")]);
    }

    #[test]
    fn a_coordinator_that_names_some_steps_takes_the_untouched_nodes() {
        let cs = [
            component("Feed Sync", "Mirrors advisories.", &[]),
            component("Ticket Filer", "Files tickets.", &[]),
            component(
                "Triage Coordinator",
                "Files a ticket for each advisory with the Ticket Filer.",
                &[],
            ),
        ];
        let g = graph(&cs, &[Effect, Effect, Orchestrator]).unwrap();
        assert_eq!(
            edges(&g),
            [
                ("Triage Coordinator", "Feed Sync"),
                ("Triage Coordinator", "Ticket Filer")
            ]
        );
    }

    #[test]
    fn a_silent_orchestrator_coordinates_every_other_node() {
        let cs = [
            component("Ingest", "Stores events.", &[]),
            component("Score", "Calculates a score.", &[]),
            component("Review Flow", "Coordinates reviews.", &[]),
        ];
        let g = graph(&cs, &[Effect, Compute, Orchestrator]).unwrap();
        assert_eq!(
            edges(&g),
            [("Review Flow", "Ingest"), ("Review Flow", "Score")]
        );
    }

    #[test]
    fn wiring_lines_win_and_prose_never_closes_a_cycle() {
        let cs = [
            component("Risk Scoring", "Feeds the Merchant Rollup.", &[]),
            component("Merchant Rollup", "Folds results.", &["risk scoring"]),
        ];
        let g = graph(&cs, &[Compute, Reducer]).unwrap();
        assert_eq!(edges(&g), [("Merchant Rollup", "Risk Scoring")]);
        assert_eq!(g.dependency_order(), [0, 1]);
        assert!(!g.guessed(1, 0));
    }

    #[test]
    fn unknown_references_and_cycles_name_the_nodes() {
        let cs = [component("A Node", "x", &["Missing Thing"])];
        let err = graph(&cs, &[Effect]).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"A Node\" uses \"Missing Thing\""),
            "{err}"
        );

        let cs = [
            component("Alpha", "x", &["Beta"]),
            component("Beta", "y", &["Gamma"]),
            component("Gamma", "z", &["Alpha"]),
        ];
        let err = graph(&cs, &[Effect, Compute, Reducer]).unwrap_err();
        assert_eq!(
            err,
            SystemError::Cycle(vec!["Alpha".into(), "Beta".into(), "Gamma".into()])
        );
        assert!(err.to_string().contains("Alpha -> Beta -> Gamma -> Alpha"));
    }
}
