"""Every node generated from the examples runs (issue: core pipeline, checks 2, 3 and 6)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import INTROSPECTION_TOPIC, ROOT, examples_output, generate
from nodecheck import (
    RunningNode,
    check_runs,
    check_static,
    free_port,
    wait_for,
    wait_for_event_bus,
)


def node_type(node_dir: Path) -> str:
    return node_dir.name.rsplit("_", 1)[-1]


def test_static_checks(example_node: Path) -> None:
    check_static(example_node)


def test_starts_answers_probes_and_stops(example_node: Path) -> None:
    ready = check_runs(example_node)
    if node_type(example_node) in ("effect", "orchestrator"):
        assert ready["event_bus"] == "degraded", ready
        assert "no Kafka bootstrap servers" in str(ready["event_bus_reason"])
    else:
        assert ready["event_bus"] == "disabled", ready


def test_unreachable_broker_degrades_but_serves(example_node: Path) -> None:
    if node_type(example_node) not in ("effect", "orchestrator"):
        pytest.skip("not an event-bus member")
    dead = f"127.0.0.1:{free_port()}"
    with RunningNode(example_node, ["--kafka-servers", dead]) as node:
        wait_for(node.base + "/health/ready", 5.0)
        body = wait_for_event_bus(node.base, "degraded", 15)
        assert body["event_bus"] == "degraded", body
        code, _, out = node.stop()
        assert code == 0, out


def test_publishes_introspection_to_a_real_broker(example_node: Path, broker: str) -> None:
    if node_type(example_node) not in ("effect", "orchestrator"):
        pytest.skip("not an event-bus member")
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": broker, "group.id": f"test-{uuid.uuid4()}", "enable.auto.commit": False, "fetch.wait.max.ms": 10}
    )
    _low, high = consumer.get_watermark_offsets(TopicPartition(INTROSPECTION_TOPIC, 0), timeout=10)
    consumer.assign([TopicPartition(INTROSPECTION_TOPIC, 0, high)])
    with RunningNode(example_node, ["--kafka-servers", broker]) as node:
        wait_for(node.base + "/health/ready", 5.0)
        event = None
        deadline = time.monotonic() + 15
        while event is None and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            value = json.loads(msg.value())
            if value.get("node_name") == example_node.name:
                event = value
        consumer.close()
        assert event is not None, "no introspection event arrived"
        for field in ("node_id", "node_name", "node_type", "version", "capabilities", "health_endpoint", "timestamp"):
            assert field in event, field
        assert event["node_type"].lower() == node_type(example_node)
        ready = wait_for_event_bus(node.base, "connected", 10)
        assert ready["event_bus"] == "connected", ready
        code, _, out = node.stop()
        assert code == 0, out


def tree(root: Path) -> dict[str, bytes]:
    """Every generated file (bytecode caches written by running the nodes are not generated)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generation_is_deterministic(tmp_path: Path) -> None:
    inputs = sorted((ROOT / "examples").glob("*.yaml"))
    first = generate(inputs, tmp_path / "a")
    second = generate(inputs, tmp_path / "b")
    assert first.returncode == 0 and second.returncode == 0
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert first.stdout.replace(str(tmp_path / "a"), "OUT") == second.stdout.replace(str(tmp_path / "b"), "OUT")
    assert tree(tmp_path / "a") == tree(examples_output())


def test_examples_score_at_least_0_9_with_every_deduction_located() -> None:
    result = generate(sorted((ROOT / "examples").glob("*.yaml")), examples_output().parent / "scores")
    docs = list(yaml.safe_load_all(result.stdout))
    assert len(docs) == len(list((ROOT / "examples").glob("*.yaml")))
    count = 0
    for doc in docs:
        ready = next(c for c in doc["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", ready
        for node in doc["report"]["nodes"]:
            count += 1
            q = node["quality"]
            assert q["overall"] >= 0.9, (node["name"], q["overall"])
            assert q["passed"] is True
            for d in q["deductions"]:
                assert d["file"] and isinstance(d["line"], int) and d["rule"] and d["message"], d
            print(f"{node['name']}: overall {q['overall']}, onex {q['onexCompliance']}, {len(q['deductions'])} deduction(s)")
    assert count >= 12
