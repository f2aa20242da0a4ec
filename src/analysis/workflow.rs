//! An orchestrator's workflow over the nodes of its system.
//!
//! One remote step per node the orchestrator uses, ordered by the system graph (a step waits
//! for the steps of the nodes its node uses; the others run in parallel), then the
//! orchestrator's own operations as local steps, one after the other. A step on an Effect node
//! is undone by that node's undo operation ("Refund a captured payment") when a later step
//! fails.

use std::collections::BTreeSet;

use super::{NodeRef, PlannedNode, SystemGraph};
use crate::api::{NodeType, WorkflowSpec};
use crate::naming;

/// How long one attempt of a step may take.
pub const STEP_TIMEOUT_MS: u64 = 5_000;
/// Extra attempts of a step after a timeout or a failed reply.
pub const STEP_RETRIES: u32 = 1;
/// First words of an orchestrator's own operations that begin a run, so their steps come
/// before the steps on other nodes ("Receive a submitted application").
const ENTRY_VERBS: &[&str] = &["receive", "start", "accept", "submit", "begin", "initiate"];
/// First words of an operation that undoes what another operation of its node did.
const UNDO_VERBS: &[&str] = &[
    "refund",
    "cancel",
    "release",
    "revert",
    "reverse",
    "undo",
    "rollback",
    "void",
    "compensate",
    "unreserve",
    "withdraw",
];

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedStep {
    /// Unique in the workflow.
    pub name: String,
    /// The node that runs the step: a sibling, or the orchestrator itself for a local step.
    pub node_type: NodeType,
    pub domain: String,
    pub service: String,
    pub local: bool,
    pub operation: String,
    /// The operation of the same node that undoes this step.
    pub compensation: Option<String>,
    pub depends_on: Vec<String>,
    /// How long one attempt may take.
    pub timeout_ms: u64,
    /// Extra attempts after a timeout or a failed reply.
    pub retries: u32,
}

/// Give every orchestrator of the system the workflow over the nodes it uses.
pub(super) fn plan_workflows(nodes: &mut [PlannedNode], g: &SystemGraph) {
    for o in 0..nodes.len() {
        if nodes[o].node_type != NodeType::Orchestrator {
            continue;
        }
        let used: BTreeSet<usize> = g.uses(o).collect();
        if used.is_empty() {
            continue;
        }
        let mut taken = BTreeSet::new();
        let mut unique = |base: &str| {
            let mut name = base.to_string();
            let mut n = 2;
            while !taken.insert(name.clone()) {
                name = format!("{base}_{n}");
                n += 1;
            }
            name
        };
        let order: Vec<usize> = g
            .dependency_order()
            .into_iter()
            .filter(|n| used.contains(n))
            .collect();
        let step_names: Vec<(usize, String)> = order
            .iter()
            .map(|&n| (n, unique(&nodes[n].service)))
            .collect();
        let name_of = |n: usize| {
            step_names
                .iter()
                .find(|(m, _)| *m == n)
                .map(|(_, s)| s.clone())
        };
        let mut steps = Vec::new();
        for (n, name) in &step_names {
            let node = &nodes[*n];
            let (operation, compensation) = primary_and_undo(node);
            let depends_on = order
                .iter()
                .filter(|&&m| m != *n && g.reaches(*n, m))
                .filter_map(|&m| name_of(m))
                .collect();
            steps.push(PlannedStep {
                name: name.clone(),
                node_type: node.node_type,
                domain: node.domain.clone(),
                service: node.service.clone(),
                local: false,
                operation,
                compensation,
                depends_on,
                timeout_ms: STEP_TIMEOUT_MS,
                retries: STEP_RETRIES,
            });
        }
        // The orchestrator's own operations: entry ones before the remote steps, the
        // others after them, each chain in PRD order.
        let own = &nodes[o];
        let (head, tail): (Vec<_>, Vec<_>) = own
            .operations
            .iter()
            .partition(|op| ENTRY_VERBS.contains(&first_word(&op.name)));
        let local_step = |op: &super::Operation, name: String, depends_on| PlannedStep {
            name,
            node_type: own.node_type,
            domain: own.domain.clone(),
            service: own.service.clone(),
            local: true,
            operation: op.name.clone(),
            compensation: None,
            depends_on,
            timeout_ms: STEP_TIMEOUT_MS,
            retries: 0,
        };
        let mut previous: Vec<String> = Vec::new();
        let mut head_steps = Vec::new();
        for op in head {
            let name = unique(&op.name);
            head_steps.push(local_step(
                op,
                name.clone(),
                std::mem::replace(&mut previous, vec![name]),
            ));
        }
        for step in steps.iter_mut().filter(|s| s.depends_on.is_empty()) {
            step.depends_on = previous.clone();
        }
        let needed: BTreeSet<String> = steps.iter().flat_map(|s| s.depends_on.clone()).collect();
        let sinks: Vec<String> = steps
            .iter()
            .filter(|s| !needed.contains(&s.name))
            .map(|s| s.name.clone())
            .collect();
        if !sinks.is_empty() {
            previous = sinks;
        }
        let mut tail_steps = Vec::new();
        for op in tail {
            let name = unique(&op.name);
            tail_steps.push(local_step(
                op,
                name.clone(),
                std::mem::replace(&mut previous, vec![name]),
            ));
        }
        nodes[o].workflow = head_steps
            .into_iter()
            .chain(steps)
            .chain(tail_steps)
            .collect();
    }
}

/// Replace the orchestrator's derived steps with the user's (`spec.workflow`): every step
/// names a node of the system and one of its operations, and the steps form a DAG.
pub(super) fn apply_workflow_spec(
    nodes: &mut [PlannedNode],
    spec: &WorkflowSpec,
) -> Result<(), String> {
    let orchestrators: Vec<usize> = (0..nodes.len())
        .filter(|n| nodes[*n].node_type == NodeType::Orchestrator)
        .collect();
    let [o] = orchestrators[..] else {
        return Err(format!(
            "spec.workflow needs exactly one Orchestrator in the system, the PRD has {}",
            orchestrators.len()
        ));
    };
    let find = |reference: &str| {
        let wanted = naming::words(reference);
        nodes
            .iter()
            .position(|n| naming::words(&n.title) == wanted || n.service == reference)
    };
    let mut steps = Vec::new();
    let mut names = BTreeSet::new();
    for step in &spec.steps {
        if !names.insert(step.name.as_str()) {
            return Err(format!("step {:?} appears twice", step.name));
        }
        let Some(n) = find(&step.node) else {
            let known: Vec<&str> = nodes.iter().map(|n| n.title.as_str()).collect();
            return Err(format!(
                "step {:?}: {:?} is not a node of the system ({})",
                step.name,
                step.node,
                known.join(", ")
            ));
        };
        let node = &nodes[n];
        let has = |op: &str| node.operations.iter().any(|o| o.name == op);
        for op in std::iter::once(&step.operation).chain(&step.compensation) {
            if !has(op) {
                let known: Vec<&str> = node.operations.iter().map(|o| o.name.as_str()).collect();
                return Err(format!(
                    "step {:?}: {} has no operation {op:?} ({})",
                    step.name,
                    node.title,
                    known.join(", ")
                ));
            }
        }
        let local = n == o;
        steps.push(PlannedStep {
            name: step.name.clone(),
            node_type: node.node_type,
            domain: node.domain.clone(),
            service: node.service.clone(),
            local,
            operation: step.operation.clone(),
            compensation: step.compensation.clone(),
            depends_on: step.depends_on.clone(),
            timeout_ms: step
                .timeout_seconds
                .map_or(STEP_TIMEOUT_MS, |s| u64::from(s) * 1000),
            retries: step.retries.unwrap_or(if local { 0 } else { STEP_RETRIES }),
        });
    }
    for step in &steps {
        if let Some(dep) = step.depends_on.iter().find(|d| !names.contains(d.as_str())) {
            return Err(format!(
                "step {:?} depends on {dep:?}, which is not a step",
                step.name
            ));
        }
    }
    // A DAG: place steps whose dependencies are placed until none is left.
    let mut placed = BTreeSet::new();
    while placed.len() < steps.len() {
        let before = placed.len();
        for step in &steps {
            if step.depends_on.iter().all(|d| placed.contains(d.as_str())) {
                placed.insert(step.name.as_str());
            }
        }
        if placed.len() == before {
            let circle: Vec<&str> = steps
                .iter()
                .map(|s| s.name.as_str())
                .filter(|n| !placed.contains(n))
                .collect();
            return Err(format!(
                "steps depend on each other in a circle: {}",
                circle.join(", ")
            ));
        }
    }
    nodes[o].workflow = steps;
    Ok(())
}

/// A reducer that is no orchestrator's step folds the results of the nodes it uses, read from
/// their terminal topics; one that is a step gets them from the workflow instead (both would
/// fold each result twice).
pub(super) fn plan_aggregates(nodes: &mut [PlannedNode], g: &SystemGraph) {
    let stepped: BTreeSet<(String, NodeType)> = nodes
        .iter()
        .flat_map(|n| &n.workflow)
        .filter(|s| !s.local)
        .map(|s| (s.service.clone(), s.node_type))
        .collect();
    for r in 0..nodes.len() {
        let node = &nodes[r];
        if node.node_type != NodeType::Reducer
            || stepped.contains(&(node.service.clone(), node.node_type))
        {
            continue;
        }
        let sources = g
            .uses(r)
            .filter_map(|u| nodes.get(u))
            .map(|n| NodeRef {
                node_type: n.node_type,
                domain: n.domain.clone(),
                service: n.service.clone(),
            })
            .collect();
        nodes[r].aggregates = sources;
    }
}

fn first_word(name: &str) -> &str {
    name.split('_').next().unwrap_or(name)
}

/// The operation a step calls on `node`, and (Effects only) the one that undoes it.
fn primary_and_undo(node: &PlannedNode) -> (String, Option<String>) {
    let is_undo = |name: &str| UNDO_VERBS.contains(&first_word(name));
    let primary = node
        .operations
        .iter()
        .find(|o| !is_undo(&o.name))
        .or(node.operations.first())
        .map(|o| o.name.clone())
        .unwrap_or_default();
    let undo = match node.node_type {
        NodeType::Effect => node
            .operations
            .iter()
            .find(|o| is_undo(&o.name) && o.name != primary)
            .map(|o| o.name.clone()),
        _ => None,
    };
    (primary, undo)
}

#[cfg(test)]
mod tests {
    use super::super::{Overrides, plan};
    use crate::prd::parse;

    #[test]
    fn steps_follow_the_graph_with_entry_steps_first_and_undo_operations() {
        let md = "# Shop\n## Nodes\n### Stock Reservation\nType: effect\n- Reserve stock for the order\n- Release reserved stock\n### Payment Capture\nType: effect\nDepends on: Stock Reservation\n- Capture the payment\n- Refund a captured payment\n### Price Check\nCalculates a price.\n- Calculate the price\n### Checkout Workflow\nCoordinates the checkout.\n- Receive a checkout request\n- Confirm the order to the customer\n";
        let p = plan(
            &parse(md).unwrap(),
            &Overrides {
                fallback_name: "x",
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let orchestrator = p.nodes.iter().find(|n| !n.workflow.is_empty()).unwrap();
        let steps: Vec<(&str, bool, Vec<&str>, Option<&str>)> = orchestrator
            .workflow
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.local,
                    s.depends_on.iter().map(String::as_str).collect(),
                    s.compensation.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                ("receive_checkout_request", true, vec![], None),
                (
                    "stock_reservation",
                    false,
                    vec!["receive_checkout_request"],
                    Some("release_reserved_stock")
                ),
                (
                    "payment_capture",
                    false,
                    vec!["stock_reservation"],
                    Some("refund_captured_payment")
                ),
                ("price_check", false, vec!["receive_checkout_request"], None),
                (
                    "confirm_order_customer",
                    true,
                    vec!["payment_capture", "price_check"],
                    None
                ),
            ]
        );
    }

    fn plan_with(spec: &crate::api::WorkflowSpec) -> Result<super::super::Plan, String> {
        let md = "# Shop\n## Nodes\n### Stock Reservation\nType: effect\n- Reserve stock for the order\n- Release reserved stock\n### Price Check\nCalculates a price.\n- Calculate the price\n### Checkout Workflow\nCoordinates the checkout.\n- Receive a checkout request\n";
        plan(
            &parse(md).unwrap(),
            &Overrides {
                fallback_name: "x",
                workflow: Some(spec),
                ..Default::default()
            },
            None,
        )
        .map_err(|e| format!("{}: {e}", e.reason()))
    }

    fn step(
        name: &str,
        node: &str,
        operation: &str,
        deps: &[&str],
    ) -> crate::api::WorkflowStepSpec {
        crate::api::WorkflowStepSpec {
            name: name.into(),
            node: node.into(),
            operation: operation.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            timeout_seconds: Some(2),
            retries: None,
            compensation: None,
        }
    }

    #[test]
    fn the_spec_replaces_the_steps_and_is_checked() {
        use crate::api::WorkflowSpec;
        let spec = WorkflowSpec {
            steps: vec![
                step("price", "price_check", "calculate_price", &[]),
                step(
                    "reserve",
                    "Stock Reservation",
                    "reserve_stock_order",
                    &["price"],
                ),
                step(
                    "start",
                    "Checkout Workflow",
                    "receive_checkout_request",
                    &["reserve"],
                ),
            ],
        };
        let p = plan_with(&spec).unwrap();
        let steps = &p
            .nodes
            .iter()
            .find(|n| !n.workflow.is_empty())
            .unwrap()
            .workflow;
        let summary: Vec<(&str, bool, u64, u32)> = steps
            .iter()
            .map(|s| (s.name.as_str(), s.local, s.timeout_ms, s.retries))
            .collect();
        assert_eq!(
            summary,
            [
                ("price", false, 2000, 1),
                ("reserve", false, 2000, 1),
                ("start", true, 2000, 0)
            ]
        );

        let mut bad = spec.clone();
        bad.steps[1].operation = "sell_stock".into();
        assert!(plan_with(&bad).unwrap_err().starts_with("InvalidWorkflow: spec.workflow: step \"reserve\": Stock Reservation has no operation \"sell_stock\""));
        let mut bad = spec.clone();
        bad.steps[0].node = "Warehouse".into();
        assert!(
            plan_with(&bad)
                .unwrap_err()
                .contains("\"Warehouse\" is not a node of the system")
        );
        let mut bad = spec.clone();
        bad.steps[0].depends_on = vec!["start".into()];
        assert!(
            plan_with(&bad)
                .unwrap_err()
                .contains("in a circle: price, reserve, start")
        );
        let mut bad = spec;
        bad.steps[2].depends_on = vec!["nope".into()];
        assert!(
            plan_with(&bad)
                .unwrap_err()
                .contains("depends on \"nope\", which is not a step")
        );
    }
}
