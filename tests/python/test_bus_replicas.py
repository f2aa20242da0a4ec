"""Replicas of one node share its command topic on a real broker: every command is processed
exactly once, and exactly one result reaches the terminal topic for each (issue 15, check 4)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import yaml

from conftest import examples_output
from nodecheck import RunningNode, get, wait_for_event_bus

COMMANDS = 1000
REPLICAS = 3


def writer_node() -> Path:
    return examples_output() / "postgres-writer" / "node_data_postgres_writer_effect"


def assigned_partitions(node: RunningNode) -> list[int]:
    stats = get(node.base + "/health/ready").json()["event_bus_stats"]
    assert isinstance(stats, dict)
    return list(stats.get("assigned_partitions") or [])


def wait_for_balanced_group(replicas: list[RunningNode], deadline_s: float) -> list[list[int]]:
    """Until every replica holds command partitions of its own (the group has settled)."""
    deadline = time.monotonic() + deadline_s
    while True:
        assignment = [assigned_partitions(node) for node in replicas]
        flat = [p for parts in assignment for p in parts]
        if all(assignment) and len(flat) == len(set(flat)):
            return assignment
        assert time.monotonic() < deadline, f"the consumer group did not settle: {assignment}"
        time.sleep(0.5)


def test_three_replicas_process_a_thousand_commands_exactly_once(broker: str) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    node_dir = writer_node()
    contract = yaml.safe_load((node_dir / node_dir.name / "contract.yaml").read_text())
    command_topic = contract["event_bus"]["subscribe_topics"][0]
    result_topic = contract["terminal_event"]
    replicas = [
        RunningNode(node_dir, ["--kafka-servers", broker, "--replica", f"writer-{i}", "--log-level", "WARNING"])
        for i in range(REPLICAS)
    ]
    try:
        for node in replicas:
            wait_for_event_bus(node.base, "connected", 20)
        assignment = wait_for_balanced_group(replicas, 60)
        results = Consumer(
            {"bootstrap.servers": broker, "group.id": f"test-{uuid.uuid4()}", "enable.auto.commit": False}
        )
        _, high = results.get_watermark_offsets(TopicPartition(result_topic, 0), timeout=10)
        results.assign([TopicPartition(result_topic, 0, high)])

        sent = [str(uuid.uuid4()) for _ in range(COMMANDS)]
        producer = Producer({"bootstrap.servers": broker, "linger.ms": 5})
        for i, correlation_id in enumerate(sent):
            envelope = {
                "envelope_id": str(uuid.uuid4()),
                "correlation_id": correlation_id,
                "payload": {"operation": "insert_single_record", "payload": {"id": f"order-{i}", "n": i}},
            }
            producer.produce(command_topic, json.dumps(envelope).encode(), key=correlation_id.encode())
        assert producer.flush(30) == 0, "commands not delivered"

        seen: dict[str, int] = {}
        failures: list[object] = []
        deadline = time.monotonic() + 180
        while len(seen) < COMMANDS and time.monotonic() < deadline:
            for message in results.consume(500, 0.5):
                if message.error():
                    continue
                envelope = json.loads(message.value())
                correlation_id = envelope["correlation_id"]
                seen[correlation_id] = seen.get(correlation_id, 0) + 1
                if envelope["payload"].get("success") is not True:
                    failures.append(envelope["payload"])
        # Anything processed twice would show up shortly after the last first result.
        settle = time.monotonic() + 3
        while time.monotonic() < settle:
            for message in results.consume(500, 0.5):
                if not message.error():
                    correlation_id = json.loads(message.value())["correlation_id"]
                    seen[correlation_id] = seen.get(correlation_id, 0) + 1
        results.close()

        per_replica = [int(get(node.base + "/health/ready").json()["requests"]["total"]) for node in replicas]  # type: ignore[index]
        print(
            f"{COMMANDS} commands over {REPLICAS} replicas (partitions {assignment}): "
            f"processed {per_replica}, {len(seen)} results"
        )
        assert set(seen) == set(sent), f"{len(set(sent) - set(seen))} results missing"
        duplicates = {c: n for c, n in seen.items() if n > 1}
        assert not duplicates, f"{len(duplicates)} commands answered more than once"
        assert not failures, failures[:3]
        assert sum(per_replica) == COMMANDS, per_replica
        assert sum(1 for n in per_replica if n > 0) >= 2, f"the replicas did not share the work: {per_replica}"
        for node in replicas:
            code, _, out = node.stop()
            assert code == 0, out
    finally:
        for node in replicas:
            node.__exit__()
