"""An in-memory Kafka for several nodes at once, and sibling nodes that answer.

Like the fakes of test_bus.py it stands in for confluent-kafka through the
runtime's Protocols, but it keeps a log per topic that every consumer reads
from its own position (``earliest`` or ``latest`` at assignment, as a real
consumer in a group of its own would), so an orchestrator's commands reach a
``FakeSibling`` (or a real node on the same broker) and the replies come back.
"""

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import JsonValue

from omninode_runtime.bus import (
    AssignmentCallback,
    DeliveryCallback,
    Headers,
    KafkaConsumer,
    KafkaProducer,
    ReceivedHeaders,
    build_envelope,
    parse_command,
)

Sent = tuple[str, str, dict[str, JsonValue]]


class FakePartition:
    """What an assignment callback reads of a ``TopicPartition``."""

    def __init__(self, partition: int) -> None:
        self.partition = partition


class FakeMessage:
    def __init__(self, value: bytes, headers: Headers | None = None) -> None:
        self._value = value
        self._headers = headers

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> object | None:
        return None

    def headers(self) -> ReceivedHeaders | None:
        return list(self._headers) if self._headers else None


class FakeBroker:
    """KafkaClients whose producers and consumers share one set of topic logs."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.sent_headers: list[Headers] = []  # in step with ``sent``
        self.created: dict[str, int] = {}
        self.consumer_configs: list[dict[str, object]] = []
        self._logs: dict[str, list[tuple[bytes, Headers]]] = {}
        self._lock = threading.Lock()
        self._listeners: dict[str, list[Callable[[bytes], None]]] = {}

    def producer(self, config: dict[str, object]) -> KafkaProducer:
        return FakeBrokerProducer(self)

    def consumer(self, config: dict[str, object]) -> KafkaConsumer:
        self.consumer_configs.append(config)
        return FakeBrokerConsumer(self, str(config.get("auto.offset.reset")))

    def create_topics(
        self, config: dict[str, object], topics: dict[str, int], timeout_s: float
    ) -> None:
        self.created.update(topics)

    def append(
        self, topic: str, key: str, value: bytes, headers: Headers | None = None
    ) -> None:
        """Write one message; a sibling listening on ``topic`` gets it at once."""
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = {"unreadable": value.decode(errors="replace")}
        with self._lock:
            self._logs.setdefault(topic, []).append((value, list(headers or [])))
            self.sent.append((topic, key, decoded))
            self.sent_headers.append(list(headers or []))
            listeners = list(self._listeners.get(topic, []))
        for listener in listeners:
            listener(value)

    def publish(
        self, topic: str, key: str, value: JsonValue, headers: Headers | None = None
    ) -> None:
        """Write ``value`` as JSON (a test injecting a message)."""
        self.append(topic, key, json.dumps(value).encode(), headers)

    def read(self, topic: str, offset: int) -> tuple[bytes, Headers] | None:
        with self._lock:
            log = self._logs.get(topic, [])
            return log[offset] if offset < len(log) else None

    def end(self, topic: str) -> int:
        with self._lock:
            return len(self._logs.get(topic, []))

    def on_topic(self, topic: str, listener: Callable[[bytes], None]) -> None:
        """Call ``listener`` with each message written to ``topic`` from now on."""
        with self._lock:
            self._listeners.setdefault(topic, []).append(listener)

    def on(self, topic: str) -> list[dict[str, JsonValue]]:
        """The envelopes written to ``topic``, in order."""
        with self._lock:
            return [value for sent_topic, _, value in self.sent if sent_topic == topic]

    def traceparents(self, topic: str) -> list[str | None]:
        """The ``traceparent`` header of each message written to ``topic``."""
        with self._lock:
            return [
                next((v.decode() for k, v in headers if k == "traceparent"), None)
                for (sent_topic, _, _), headers in zip(
                    self.sent, self.sent_headers, strict=True
                )
                if sent_topic == topic
            ]


class FakeBrokerProducer:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
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
        self.broker.append(topic, key.decode(), value, headers)
        self.pending.append(on_delivery)

    def poll(self, timeout: float = -1) -> int:
        pending, self.pending = self.pending, []
        for callback in pending:
            callback(None, None)
        return len(pending)

    def flush(self, timeout: float = -1) -> int:
        self.poll()
        return 0


class FakeBrokerConsumer:
    """Reads its topics from its own positions; assigned on its first poll."""

    def __init__(self, broker: FakeBroker, offset_reset: str) -> None:
        self.broker = broker
        self.offset_reset = offset_reset
        self.topics: list[str] = []
        self.positions: dict[str, int] | None = None
        self._on_assign: AssignmentCallback | None = None
        self.closed = False

    def subscribe(
        self,
        topics: list[str],
        on_assign: AssignmentCallback | None = None,
        on_revoke: AssignmentCallback | None = None,
    ) -> None:
        self.topics = topics
        self._on_assign = on_assign

    def poll(self, timeout: float = -1) -> FakeMessage | None:
        if self.positions is None:
            # Like librdkafka: the assignment happens inside a poll.
            latest = self.offset_reset == "latest"
            self.positions = {
                topic: self.broker.end(topic) if latest else 0 for topic in self.topics
            }
            if self._on_assign is not None:
                self._on_assign(self, [FakePartition(0)])
            return None
        for topic in self.topics:
            record = self.broker.read(topic, self.positions[topic])
            if record is not None:
                self.positions[topic] += 1
                return FakeMessage(*record)
        time.sleep(min(max(timeout, 0.0), 0.005))
        return None

    def store_offsets(self, message: object) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class Command:
    """One command a sibling received."""

    operation: str
    correlation_id: str
    payload: dict[str, JsonValue]
    at: float


@dataclass(frozen=True)
class Answer:
    """How a sibling answers one command: after ``delay_s``, or not at all."""

    result: dict[str, JsonValue] = field(default_factory=dict)
    error: str | None = None
    delay_s: float = 0.0
    silent: bool = False


Behaviour = Callable[[Command], Answer]


class FakeSibling:
    """A node answering its command topic like a generated node does.

    The reply is an envelope on ``reply_topic`` whose correlation id is the
    command envelope's, carrying an output body.
    """

    def __init__(
        self,
        broker: FakeBroker,
        name: str,
        command_topic: str,
        reply_topic: str,
        behaviour: Behaviour | None = None,
    ) -> None:
        self.broker = broker
        self.name = name
        self.reply_topic = reply_topic
        self.behaviour: Behaviour = behaviour or (lambda c: Answer({"by": name}))
        self.commands: list[Command] = []
        self.replied: list[tuple[str, float]] = []
        broker.on_topic(command_topic, self._receive)

    def _receive(self, raw: bytes) -> None:
        data, reply_id = parse_command(raw)
        payload = data.get("payload")
        command = Command(
            operation=str(data.get("operation")),
            correlation_id=str(reply_id),
            payload=payload if isinstance(payload, dict) else {},
            at=time.monotonic(),
        )
        self.commands.append(command)
        answer = self.behaviour(command)
        if answer.silent:
            return
        timer = threading.Timer(answer.delay_s, self._reply, (command, answer))
        timer.daemon = True
        timer.start()

    def _reply(self, command: Command, answer: Answer) -> None:
        body: dict[str, JsonValue] = {
            "success": answer.error is None,
            "operation": command.operation,
            "correlation_id": command.correlation_id,
            "result": answer.result,
            "error": answer.error,
            "processing_time_ms": 1.0,
        }
        envelope = build_envelope(
            payload=body,
            event_type=self.reply_topic,
            source_tool=self.name,
            correlation_id=command.correlation_id,
        )
        self.replied.append((command.correlation_id, time.monotonic()))
        self.broker.publish(self.reply_topic, command.correlation_id, envelope)

    def operations(self) -> list[str]:
        """The operations received, in order."""
        return [command.operation for command in self.commands]
