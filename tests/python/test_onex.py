"""The real ONEX tools accept the generated nodes (issue 15): omnibase-core 0.42's `onex validate
--strict` and `onex run-node`, and omnibase-infra 0.36.1's registry model for introspection.

They need Python 3.12: `OMNINODE_ONEX_PYTHON` names the interpreter of a venv with
tests/python/onex-requirements.txt (scripts/test-all.sh makes it). The nodes themselves run on
the runtime's own venv, as everywhere else in these tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conftest import INTROSPECTION_TOPIC, example_nodes
from nodecheck import RunningNode, get, package_of, runtime_dir, shared_dirs, wait_for_event_bus

VALIDATE_ENVELOPES = """
import json, sys
from omnibase_core.models.events.model_event_envelope import ModelEventEnvelope
from omnibase_infra.models.registration.model_node_introspection_event import (
    ModelNodeIntrospectionEvent,
)
for line in sys.stdin:
    envelope = ModelEventEnvelope[ModelNodeIntrospectionEvent].model_validate_json(line)
    print(envelope.payload.reason.value, envelope.payload.node_type.value)
"""


@pytest.fixture(scope="session")
def onex_python() -> Path:
    value = os.environ.get("OMNINODE_ONEX_PYTHON")
    if not value:
        if os.environ.get("CI"):
            pytest.fail("OMNINODE_ONEX_PYTHON is not set; scripts/test-all.sh makes the ONEX venv")
        pytest.skip("no ONEX venv: set OMNINODE_ONEX_PYTHON (scripts/test-all.sh makes it)")
    return Path(value)


@pytest.fixture(scope="session")
def installed_nodes(onex_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every example node and the runtime, pip-installed into a directory that goes on the ONEX
    tools' PYTHONPATH (so `onex.nodes` lists them), from copies of the generated trees."""
    work = tmp_path_factory.mktemp("onex-nodes")
    copies = []
    for node_dir in example_nodes():
        copy = work / "src" / node_dir.name
        shutil.copytree(node_dir, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        copies.append(str(copy))
    for shared in sorted({d for n in example_nodes() for d in shared_dirs(n)}):
        copy = work / "src" / f"{shared.parent.name}-{shared.name}"
        shutil.copytree(shared, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        copies.append(str(copy))
    target = work / "site"
    wheel = next(runtime_dir(example_nodes()[0]).glob("*.whl"))
    pip = [str(onex_python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    result = subprocess.run([*pip, "--target", str(target), str(wheel), *copies], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def onex(onex_python: Path, args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = onex_python.parent / "onex"
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update(env or {})
    return subprocess.run([str(command), *args], capture_output=True, text=True, timeout=timeout, env=environ)


def test_onex_validate_strict_passes(example_node: Path, onex_python: Path) -> None:
    """Every check PASS. onex 0.42 exits 1 even then (its `ctx.exit(0)` lands in a catch-all that
    prints `Unexpected error: EnumCLIExitCode.SUCCESS`), so the verdict is read from the report."""
    package = example_node / package_of(example_node)
    result = onex(onex_python, ["validate", "--strict", str(package)])
    report = result.stdout + result.stderr
    for check in ("architecture", "union-usage", "contracts", "patterns"):
        assert f"[PASS] {check}" in report, report
    assert "[FAIL]" not in report and "All validations passed!" in report, report
    assert result.returncode == 0 or "EnumCLIExitCode.SUCCESS" in report, report


def read_introspection(broker: str, node_name: str, since: int, reasons: set[str], deadline_s: float) -> dict[str, str]:
    """The raw introspection messages of `node_name` after offset `since`, by reason."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"test-{uuid.uuid4()}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(INTROSPECTION_TOPIC, 0, since)])
    found: dict[str, str] = {}
    deadline = time.monotonic() + deadline_s
    while not reasons <= set(found) and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        raw = message.value().decode()
        payload = json.loads(raw).get("payload") or {}
        if payload.get("node_name") == node_name:
            found.setdefault(str(payload.get("reason")), raw)
    consumer.close()
    return found


def test_the_registry_accepts_the_introspection(example_node: Path, broker: str, onex_python: Path) -> None:
    """Start and SIGTERM on a real broker: both announcements parse as omnibase_core's
    ModelEventEnvelope whose payload is omnibase_infra's ModelNodeIntrospectionEvent."""
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": broker, "group.id": f"test-{uuid.uuid4()}"})
    _, since = probe.get_watermark_offsets(TopicPartition(INTROSPECTION_TOPIC, 0), timeout=10)
    probe.close()
    with RunningNode(example_node, ["--kafka-servers", broker]) as node:
        wait_for_event_bus(node.base, "connected", 15)
        code, took, out = node.stop()
        assert code == 0 and took <= 5.0, out
    messages = read_introspection(broker, example_node.name, since, {"startup", "shutdown"}, 15)
    assert set(messages) >= {"startup", "shutdown"}, messages.keys()
    lines = messages["startup"] + "\n" + messages["shutdown"] + "\n"
    result = subprocess.run([str(onex_python), "-c", VALIDATE_ENVELOPES], input=lines, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    kind = example_node.name.rsplit("_", 1)[-1]
    assert result.stdout.split("\n")[:2] == [f"startup {kind}", f"shutdown {kind}"], result.stdout


def assigned(node: RunningNode) -> list[int]:
    stats = get(node.base + "/health/ready").json()["event_bus_stats"]
    assert isinstance(stats, dict)
    return list(stats.get("assigned_partitions") or [])


def wait_until_assigned(node: RunningNode) -> None:
    """Until the node is on the bus with command partitions of its own."""
    wait_for_event_bus(node.base, "connected", 15)
    deadline = time.monotonic() + 60
    while not assigned(node):
        assert time.monotonic() < deadline, "no command partitions assigned"
        time.sleep(0.3)


@pytest.fixture
def serving(example_node: Path, broker: str) -> Iterator[RunningNode]:
    """The node on the broker, with its command partitions assigned. A consumer group of its own:
    the node's default group is shared with every earlier test's instances of it, and a member
    stopped mid-join can hold that group up (tests/python/test_bus_replicas.py covers replicas)."""
    group = f"onex-test-{uuid.uuid4()}"
    args = ["--kafka-servers", broker, "--log-level", "WARNING", "--consumer-group", group]
    with RunningNode(example_node, args) as node:
        wait_until_assigned(node)
        yield node
        code, _, out = node.stop()
        assert code == 0, out


def run_node(onex_python: Path, site: Path, broker: str, node: str, data: dict[str, object]) -> dict[str, object]:
    result = onex(
        onex_python,
        ["run-node", node, "--input", json.dumps(data), "--timeout", "30"],
        env={"KAFKA_BOOTSTRAP_SERVERS": broker, "PYTHONPATH": str(site)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    start = result.stdout.find("{")
    answer = json.loads(result.stdout[start:])
    assert isinstance(answer, dict), answer
    return answer


@contextmanager
def siblings_of(node_dir: Path, broker: str) -> Iterator[list[RunningNode]]:
    """An orchestrator's workflow runs on the other nodes of its system: those, on the broker
    (each in a consumer group of its own, as `serving` says why); nothing for other nodes."""
    contract = yaml.safe_load((node_dir / package_of(node_dir) / "contract.yaml").read_text())
    others = sorted(p for p in node_dir.parent.glob("node_*") if p.is_dir() and p != node_dir)
    started: list[RunningNode] = []
    try:
        for sibling in others if contract.get("workflow_coordination") else []:
            group = f"onex-test-{uuid.uuid4()}"
            args = ["--kafka-servers", broker, "--log-level", "WARNING", "--consumer-group", group]
            started.append(RunningNode(sibling, args))
        for node in started:
            wait_until_assigned(node)
        yield started
    finally:
        for node in started:
            node.__exit__()


def test_onex_run_node_calls_the_node(
    example_node: Path, serving: RunningNode, broker: str, onex_python: Path, installed_nodes: Path
) -> None:
    """`onex run-node` finds the node by its `onex.nodes` entry point, sends the input on its command
    topic and prints the node's result from its terminal topic; an invalid input comes back as a
    failure result, not a timeout. An orchestrator of a system runs its workflow on its siblings."""
    contract = yaml.safe_load((example_node / package_of(example_node) / "contract.yaml").read_text())
    operation = contract["handler_routing"]["handlers"][0]["operation"]
    name = package_of(example_node)
    with siblings_of(example_node, broker) as siblings:
        answer = run_node(onex_python, installed_nodes, broker, name, {"operation": operation, "payload": {"id": "onex-1", "amount": 3}})
    assert answer["success"] is True and answer["operation"] == operation, answer
    if siblings:
        steps = answer["result"]["steps"]  # type: ignore[index]
        assert all(step["status"] == "completed" for step in steps), steps
        ran_on = {step["node"] for step in steps}
        assert {s.proc.args[2] for s in siblings} <= ran_on, ran_on  # type: ignore[index]
        print(f"onex run-node {name}: {len(steps)} steps completed on {sorted(ran_on)}")
    failed = run_node(onex_python, installed_nodes, broker, name, {"operation": "no_such_operation"})
    assert failed["success"] is False and failed.get("error"), failed
