"""Bus membership logic: envelopes, command parsing, introspection, results.

A fake client stands in for confluent-kafka here to test the runtime's own
logic; the generated nodes' suite (tests/python in the repository) runs the
same code against a real broker.
"""

import asyncio
import json
from datetime import datetime
from uuid import UUID, uuid4

import pytest
from pydantic import JsonValue

from fixture_node.node import NodeFixtureWriterEffect
from omninode_runtime import ModelNodeSettings
from omninode_runtime.bus import (
    AssignmentCallback,
    DeliveryCallback,
    Headers,
    KafkaConsumer,
    KafkaMessage,
    KafkaProducer,
    ReceivedHeaders,
    parse_command,
)
from omninode_runtime.introspection import node_instance_id

Sent = tuple[str, str, dict[str, JsonValue]]


class FakeProducer:
    def __init__(self, sent: list[Sent]) -> None:
        self.sent = sent
        self.pending: list[DeliveryCallback] = []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: DeliveryCallback | None = None,
        headers: Headers | None = None,
    ) -> None:
        assert value is not None and key is not None and on_delivery is not None
        self.sent.append((topic, key.decode(), json.loads(value)))
        self.pending.append(on_delivery)

    def poll(self, timeout: float = -1) -> int:
        pending, self.pending = self.pending, []
        for callback in pending:
            callback(None, None)
        return len(pending)

    def flush(self, timeout: float = -1) -> int:
        self.poll()
        return 0


class FakeMessage:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> object | None:
        return None

    def headers(self) -> ReceivedHeaders | None:
        return None


class FakeConsumer:
    def __init__(self, inbox: list[bytes]) -> None:
        self.inbox = inbox
        self.topics: list[str] = []
        self.stored = 0

    def subscribe(
        self,
        topics: list[str],
        on_assign: AssignmentCallback | None = None,
        on_revoke: AssignmentCallback | None = None,
    ) -> None:
        self.topics = topics

    def poll(self, timeout: float = -1) -> FakeMessage | None:
        return FakeMessage(self.inbox.pop(0)) if self.inbox else None

    def store_offsets(self, message: KafkaMessage) -> None:
        self.stored += 1

    def close(self) -> None:
        pass


class FakeClients:
    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.inbox: list[bytes] = []
        self.topics: dict[str, int] = {}

    def producer(self, config: dict[str, object]) -> KafkaProducer:
        return FakeProducer(self.sent)

    def consumer(self, config: dict[str, object]) -> KafkaConsumer:
        return FakeConsumer(self.inbox)

    def create_topics(
        self, config: dict[str, object], topics: dict[str, int], timeout_s: float
    ) -> None:
        self.topics = topics


def test_commands_come_bare_or_in_an_envelope() -> None:
    cid = str(uuid4())
    data, reply = parse_command(
        json.dumps({"operation": "x", "correlation_id": cid}).encode()
    )
    assert data["operation"] == "x" and reply == cid
    envelope = {"correlation_id": cid, "payload": {"operation": "y", "payload": {}}}
    data, reply = parse_command(json.dumps(envelope).encode())
    assert data == {"operation": "y", "payload": {}, "correlation_id": cid}
    assert reply == cid
    with pytest.raises(ValueError, match="JSON object"):
        parse_command(b"[1]")


def test_node_ids_are_stable_per_replica() -> None:
    a = node_instance_id("ns", "node", "pod-0")
    assert a == node_instance_id("ns", "node", "pod-0")
    assert a != node_instance_id("ns", "node", "pod-1")
    assert a.version == 5


async def _serve_one_command(
    clients: FakeClients, command: bytes
) -> NodeFixtureWriterEffect:
    settings = ModelNodeSettings(
        kafka_servers="127.0.0.1:1",
        replica="pod-0",
        namespace="ns",
        port=8080,
        advertised_host="node.example",
    )
    node = NodeFixtureWriterEffect(settings, kafka_clients=clients)
    clients.inbox.append(command)
    await node.start()
    for _ in range(200):
        if any(t == node.contract.terminal_event for t, _, _ in clients.sent):
            break
        await asyncio.sleep(0.01)
    await node.stop()
    return node


def test_a_member_announces_itself_answers_commands_and_says_goodbye() -> None:
    clients = FakeClients()
    cid = str(uuid4())
    command = {
        "correlation_id": cid,
        "payload": {"operation": "insert_record", "payload": {"id": "k"}},
    }
    node = asyncio.run(_serve_one_command(clients, json.dumps(command).encode()))

    assert clients.topics == {
        "onex.evt.platform.node-introspection.v1": 1,
        "onex.cmd.test.fixture-writer.v1": 6,
        "onex.evt.test.fixture-writer-completed.v1": 1,
    }
    introspection = [
        v for t, _, v in clients.sent if t.endswith("node-introspection.v1")
    ]
    reasons = [v["payload"]["reason"] for v in introspection]  # type: ignore[index,call-overload]
    assert reasons == ["startup", "shutdown"]
    event = introspection[0]
    payload = event["payload"]
    assert isinstance(payload, dict)
    assert payload["node_id"] == str(node_instance_id("ns", "fixture_node", "pod-0"))
    assert payload["node_type"] == "effect"
    assert payload["node_version"] == {"major": 1, "minor": 2, "patch": 3}
    assert payload["endpoints"] == {
        "health": "http://node.example:8080/health/ready",
        "metrics": "http://node.example:8080/metrics",
        "process": "http://node.example:8080/process",
    }
    assert datetime.fromisoformat(str(payload["timestamp"])).tzinfo is not None
    assert event["envelope_version"] == {"major": 2, "minor": 1, "patch": 0}
    assert payload["event_bus"] == {
        "subscribe_topics": [
            {"topic": "onex.cmd.test.fixture-writer.v1", "message_category": "COMMAND"}
        ],
        "publish_topics": [
            {
                "topic": "onex.evt.test.fixture-writer-completed.v1",
                "message_category": "EVENT",
            }
        ],
    }
    capabilities = payload["declared_capabilities"]
    assert isinstance(capabilities, dict)
    assert capabilities["supported_types"] == list(node.contract.operations)
    UUID(str(payload["correlation_id"]))
    # Exactly the registry's fields: ModelNodeIntrospectionEvent forbids extras.
    assert set(payload) <= {
        "node_id",
        "node_type",
        "correlation_id",
        "timestamp",
        "node_name",
        "node_version",
        "endpoints",
        "reason",
        "declared_capabilities",
        "contract_capabilities",
        "event_bus",
        "metadata",
        "current_state",
    }

    results = [(k, v) for t, k, v in clients.sent if t == node.contract.terminal_event]
    assert len(results) == 1
    key, envelope = results[0]
    assert key == cid and envelope["correlation_id"] == cid
    result = envelope["payload"]
    assert isinstance(result, dict) and result["success"] is True, result
    assert result["correlation_id"] == cid


def test_an_unreadable_command_is_skipped_not_fatal() -> None:
    clients = FakeClients()
    node = asyncio.run(_serve_one_command(clients, b"\xff not json"))
    assert not any(t == node.contract.terminal_event for t, _, _ in clients.sent)
    assert node.bus.consumed == 1
