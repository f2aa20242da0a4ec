"""Node systems run end to end on a real broker (issue 16, check 1).

Every node of a system example runs as its own process, as its Deployment would run it. A command
to the orchestrator on its command topic flows through the siblings as the contract's
`workflow_coordination` says, and the result on the orchestrator's terminal topic records each step
and the node that ran it. With one sibling stopped, that step times out, the completed steps are
compensated, and the result is a failure; nothing hangs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import examples_output, generate, tansu_broker
from nodecheck import RunningNode, get, wait_for_event_bus

SYSTEMS = ["fraud-detection", "order-fulfilment", "loan-origination"]


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """A broker of this module's own: the tests count the requests each sibling serves, and other
    modules leave commands on the siblings' topics (`onex run-node` of the orchestrators)."""
    with tansu_broker() as servers:
        yield servers
# Longest a workflow may take here: its own timeout (30 s) and some.
RESULT_DEADLINE_S = 45.0


def contract_of(node_dir: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((node_dir / node_dir.name / "contract.yaml").read_text()))


def system_nodes(generation: str) -> dict[str, Path]:
    """The system's node directories by package name."""
    nodes = sorted(p for p in (examples_output() / generation).glob("node_*") if p.is_dir())
    assert len(nodes) >= 3, nodes
    return {p.name: p for p in nodes}


def orchestrator_of(nodes: dict[str, Path]) -> Path:
    found = [p for p in nodes.values() if contract_of(p).get("workflow_coordination")]
    assert len(found) == 1, f"expected one orchestrator with a workflow, found {found}"
    return found[0]


@contextmanager
def running(nodes: list[Path], broker: str) -> Iterator[dict[str, RunningNode]]:
    started = {
        p.name: RunningNode(p, ["--kafka-servers", broker, "--replica", "r0", "--log-level", "WARNING"]) for p in nodes
    }
    try:
        for node in started.values():
            wait_for_event_bus(node.base, "connected", 30)
        yield started
    finally:
        for node in started.values():
            if node.proc.poll() is None:
                node.stop()
            node.__exit__()


def requests_total(node: RunningNode) -> int:
    body = get(node.base + "/health/ready").json()
    return int(body["requests"]["total"])  # type: ignore[index, call-overload]


def run_workflow(broker: str, orchestrator: Path, payload: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Send one command to the orchestrator on its command topic; its result from the terminal
    topic, and how long it took."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    contract = contract_of(orchestrator)
    operation = contract["handler_routing"]["handlers"][0]["operation"]
    results = Consumer({"bootstrap.servers": broker, "group.id": f"test-{uuid.uuid4()}", "enable.auto.commit": False})
    topic = contract["terminal_event"]
    _, high = results.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    results.assign([TopicPartition(topic, 0, high)])
    correlation_id = str(uuid.uuid4())
    envelope = {
        "envelope_id": str(uuid.uuid4()),
        "correlation_id": correlation_id,
        "payload": {"operation": operation, "payload": payload},
    }
    producer = Producer({"bootstrap.servers": broker})
    started = time.monotonic()
    producer.produce(contract["event_bus"]["subscribe_topics"][0], json.dumps(envelope).encode(), key=correlation_id.encode())
    assert producer.flush(10) == 0, "command not delivered"
    try:
        while time.monotonic() - started < RESULT_DEADLINE_S:
            for message in results.consume(10, 0.5):
                if message.error():
                    continue
                body = json.loads(message.value())
                if body["correlation_id"] == correlation_id:
                    return dict(body["payload"]), time.monotonic() - started
        raise AssertionError(f"no result on {topic} within {RESULT_DEADLINE_S} s")
    finally:
        results.close()


def assert_in_dependency_order(steps: list[dict[str, Any]], workflow: list[dict[str, Any]]) -> None:
    """Every step completed, on the node the contract names, and started only after the steps it
    depends on had finished (the result's timeline: `started_ms` and `duration_ms`)."""
    record = {s["step"]: s for s in steps}
    for declared in workflow:
        step = record[declared["step_name"]]
        assert step["status"] == "completed", step
        assert step["node"] == declared["node"], step
        for dep in declared["depends_on"]:
            finished = record[dep]["started_ms"] + record[dep]["duration_ms"]
            assert step["started_ms"] >= finished - 0.001, f"{step['step']} started before {dep} finished"


@pytest.mark.parametrize("generation", SYSTEMS)
def test_a_command_flows_through_every_sibling(broker: str, generation: str) -> None:
    nodes = system_nodes(generation)
    orchestrator = orchestrator_of(nodes)
    workflow = contract_of(orchestrator)["workflow_coordination"]["steps"]
    remote = [s for s in workflow if s.get("command_topic")]
    siblings = {s["node"] for s in remote}
    assert siblings == set(nodes) - {orchestrator.name}, "the orchestrator uses every sibling"
    with running(list(nodes.values()), broker) as procs:
        result, took = run_workflow(broker, orchestrator, {"order_id": "o-1", "amount": 120})
        assert result["success"] is True, result
        steps = result["result"]["steps"]
        assert [s["step"] for s in steps] == [s["step_name"] for s in workflow]
        assert_in_dependency_order(steps, workflow)
        parallel = [
            (a["step_name"], b["step_name"])
            for i, a in enumerate(workflow)
            for b in workflow[i + 1 :]
            if a.get("command_topic") and b.get("command_topic") and a["depends_on"] == b["depends_on"]
        ]
        record = {s["step"]: s for s in steps}
        for a, b in parallel:
            # Independent steps overlap: each started before the other finished.
            ra, rb = record[a], record[b]
            assert ra["started_ms"] < rb["started_ms"] + rb["duration_ms"], (ra, rb)
            assert rb["started_ms"] < ra["started_ms"] + ra["duration_ms"], (ra, rb)
        for name in siblings:
            assert requests_total(procs[name]) == 1, f"{name} did not run its step exactly once"
        print(
            f"{generation}: {len(workflow)} steps ({len(remote)} on {len(siblings)} siblings) completed in {took:.2f} s: "
            + ", ".join(f"{s['step']}@{s['node'].removeprefix('node_')}" for s in steps)
        )


@pytest.mark.parametrize(
    ("generation", "stopped_step"),
    [("order-fulfilment", "courier_booking"), ("loan-origination", "identity_verification")],
)
def test_a_stopped_sibling_times_out_and_completed_steps_are_compensated(
    broker: str, generation: str, stopped_step: str
) -> None:
    nodes = system_nodes(generation)
    orchestrator = orchestrator_of(nodes)
    workflow = contract_of(orchestrator)["workflow_coordination"]["steps"]
    stopped = next(s for s in workflow if s["step_name"] == stopped_step)["node"]
    with running([p for name, p in nodes.items() if name != stopped], broker) as procs:
        result, took = run_workflow(broker, orchestrator, {"order_id": f"o-{uuid.uuid4()}"})
        assert result["success"] is False, result
        body = result["result"]
        by_step = {s["step"]: s for s in body["steps"]}
        timed_out = by_step[stopped_step]
        assert timed_out["status"] == "timed_out", timed_out
        assert stopped in (timed_out["error"] or ""), timed_out
        expected = [
            s["step_name"]
            for s in workflow
            if s.get("compensation_operation") and by_step[s["step_name"]]["status"] == "completed"
        ]
        compensated = [c["step"] for c in body["compensations"]]
        assert sorted(compensated) == sorted(expected), body["compensations"]
        assert all(c["status"] == "completed" for c in body["compensations"]), body["compensations"]
        # Reverse order: the step completed last is undone first.
        completed_order = [s["step_name"] for s in workflow if s["step_name"] in expected]
        assert compensated == list(reversed(completed_order)), compensated
        for c in body["compensations"]:
            assert requests_total(procs[c["node"]]) == 2, f"{c['node']}: its step and its compensation"
        retries = next(s for s in workflow if s["step_name"] == stopped_step)["retry_count"]
        assert timed_out["attempts"] == retries + 1, timed_out
        assert took < RESULT_DEADLINE_S
        print(
            f"{generation} without {stopped_step}: failed after {took:.1f} s; "
            f"{timed_out['attempts']} attempts timed out; compensated {compensated or 'nothing'}"
        )


FED_REDUCER = """apiVersion: codegen.omninode.ai/v1alpha1
kind: NodeGeneration
metadata: {name: meter-usage}
spec:
  domain: energy
  prd: |
    # Meter Usage

    ## Nodes

    ### Reading Ingest
    Type: effect
    Stores each smart-meter reading in PostgreSQL.
    - Store each meter reading in PostgreSQL
    - Publish the stored reading

    ### Usage Rollup
    Aggregates the stored readings into daily usage per meter.
    Uses: Reading Ingest
    - Aggregate meter readings into daily usage totals
    - Reset the daily totals at midnight
"""


def test_a_reducer_folds_the_results_of_the_nodes_it_uses(broker: str, tmp_path: Path) -> None:
    """No orchestrator routes results to this reducer: it reads its source's terminal topic, and
    folds each successful result once (a failed one is skipped)."""
    from confluent_kafka import Producer

    manifest = tmp_path / "meter-usage.yaml"
    manifest.write_text(FED_REDUCER)
    result = generate([manifest], tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    nodes = {p.name: p for p in (tmp_path / "out" / "meter-usage").glob("node_*") if p.is_dir()}
    reducer = nodes["node_energy_usage_rollup_reducer"]
    source = nodes["node_energy_reading_ingest_effect"]
    contract = contract_of(reducer)
    source_contract = contract_of(source)
    assert contract["aggregates"] == [{"node": source.name, "topic": source_contract["terminal_event"]}]
    operation = source_contract["handler_routing"]["handlers"][0]["operation"]
    with running([source, reducer], broker) as procs:
        producer = Producer({"bootstrap.servers": broker})
        sent = [(operation, {"meter": "m-1", "kwh": 1.5}), (operation, {"meter": "m-2", "kwh": 2.0}), ("no_such_operation", {})]
        for op, payload in sent:
            correlation_id = str(uuid.uuid4())
            envelope = {"envelope_id": str(uuid.uuid4()), "correlation_id": correlation_id,
                        "payload": {"operation": op, "payload": payload}}
            topic = source_contract["event_bus"]["subscribe_topics"][0]
            producer.produce(topic, json.dumps(envelope).encode(), key=correlation_id.encode())
        assert producer.flush(10) == 0
        deadline = time.monotonic() + 30
        while True:
            events = get(procs[reducer.name].base + "/health/ready").json()["source_events"]
            if events == {"folded": 2, "skipped": 1, "failed": 0} or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert events == {"folded": 2, "skipped": 1, "failed": 0}, events
        assert requests_total(procs[reducer.name]) == 2
        print(f"reducer folded {events['folded']} results of {source.name}, skipped {events['skipped']} failed one")
