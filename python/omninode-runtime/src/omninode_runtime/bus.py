"""Optional Kafka event bus: envelopes in and out, never fatal to the node.

``confluent_kafka`` is imported lazily and only through the small Protocols
below, so a node without it (or without a reachable broker) keeps serving
HTTP with the bus ``degraded`` and a reason in its health body.  Blocking
client calls run in daemon threads: a dead broker must not hold up SIGTERM.

Every message carries the W3C ``traceparent`` of the work that published it
(a Kafka header), and a consumed message is handled in a child context of its
own header, or in a new trace without one (see ``tracecontext``).
"""

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from enum import StrEnum
from types import ModuleType
from typing import Any, Protocol, TypeVar, cast
from uuid import UUID

from pydantic import JsonValue

from ._json import canonical_json
from .logs import log_event
from .tracecontext import (
    TRACEPARENT_HEADER,
    continue_trace,
    current_traceparent,
    trace_scope,
)

# omnibase_core's ModelEventEnvelope takes its version as a semver mapping only.
ENVELOPE_VERSION: dict[str, JsonValue] = {"major": 2, "minor": 1, "patch": 0}
T = TypeVar("T")
DeliveryCallback = Callable[[object, object], None]
# Kafka headers as confluent_kafka takes and gives them (a value may be None).
Headers = list[tuple[str, bytes]]
ReceivedHeaders = list[tuple[str, bytes | None]]
MessageCallback = Callable[[bytes], Coroutine[object, object, None]]
AssignmentCallback = Callable[[object, list[Any]], None]

_logger = logging.getLogger("omninode_runtime.bus")


class EnumBusState(StrEnum):
    """``connected``: the broker answered; ``degraded``: it should but did not."""

    CONNECTED = "connected"
    DEGRADED = "degraded"
    DISABLED = "disabled"


class KafkaMessage(Protocol):
    """The part of ``confluent_kafka.Message`` the consumer reads."""

    def value(self) -> bytes | None:
        """The message body."""
        ...

    def error(self) -> object | None:
        """A KafkaError, or None for a real message."""
        ...

    def headers(self) -> ReceivedHeaders | None:
        """The message's headers, in order (None when it has none)."""
        ...


class KafkaProducer(Protocol):
    """The part of ``confluent_kafka.Producer`` the bus uses."""

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: DeliveryCallback | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Queue one message."""
        ...

    def poll(self, timeout: float = -1) -> int:
        """Serve delivery callbacks."""
        ...

    def flush(self, timeout: float = -1) -> int:
        """Wait for queued messages; return how many are left."""
        ...


class KafkaConsumer(Protocol):
    """The part of ``confluent_kafka.Consumer`` the bus uses."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: AssignmentCallback | None = None,
        on_revoke: AssignmentCallback | None = None,
    ) -> None:
        """Join the group for ``topics``; the callbacks see each rebalance."""
        ...

    def poll(self, timeout: float = -1) -> KafkaMessage | None:
        """The next message, or None after ``timeout`` seconds."""
        ...

    def store_offsets(self, message: KafkaMessage) -> None:
        """Mark ``message`` processed: the next commit covers it."""
        ...

    def close(self) -> None:
        """Commit offsets and leave the group."""
        ...


class KafkaClients(Protocol):
    """Factory of Kafka clients (``confluent_kafka``, or a fake in tests)."""

    def producer(self, config: dict[str, object]) -> KafkaProducer:
        """A new producer."""
        ...

    def consumer(self, config: dict[str, object]) -> KafkaConsumer:
        """A new consumer."""
        ...

    def create_topics(
        self, config: dict[str, object], topics: dict[str, int], timeout_s: float
    ) -> None:
        """Create ``topics`` (name -> partitions); existing topics are fine."""
        ...


class ConfluentClients:
    """KafkaClients backed by ``confluent_kafka`` (see ``load_kafka_clients``)."""

    def __init__(self, module: ModuleType, admin_module: ModuleType) -> None:
        """Wrap the imported ``confluent_kafka`` and ``confluent_kafka.admin``."""
        self._kafka = module
        self._admin = admin_module

    def producer(self, config: dict[str, object]) -> KafkaProducer:
        """``confluent_kafka.Producer(config)``."""
        return cast(KafkaProducer, self._kafka.Producer(config))

    def consumer(self, config: dict[str, object]) -> KafkaConsumer:
        """``confluent_kafka.Consumer(config)``."""
        return cast(KafkaConsumer, self._kafka.Consumer(config))

    def create_topics(
        self, config: dict[str, object], topics: dict[str, int], timeout_s: float
    ) -> None:
        """Create missing topics (tansu does not create them on first use)."""
        admin = self._admin.AdminClient(config)
        wanted = [
            self._admin.NewTopic(topic, num_partitions=partitions, replication_factor=1)
            for topic, partitions in topics.items()
        ]
        futures = admin.create_topics(wanted, request_timeout=timeout_s)
        for future in futures.values():
            try:
                future.result(timeout=timeout_s)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise


def load_kafka_clients() -> KafkaClients | None:
    """``confluent_kafka`` wrapped as KafkaClients, or None when not installed."""
    try:
        module = importlib.import_module("confluent_kafka")
        admin_module = importlib.import_module("confluent_kafka.admin")
    except ImportError:
        return None
    return ConfluentClients(module, admin_module)


def build_envelope(
    *,
    payload: dict[str, JsonValue],
    event_type: str,
    source_tool: str,
    correlation_id: UUID | str,
) -> dict[str, JsonValue]:
    """An ONEX ``ModelEventEnvelope`` as JSON."""
    return {
        "envelope_id": str(uuid.uuid4()),
        "envelope_timestamp": datetime.now(UTC).isoformat(),
        "correlation_id": str(correlation_id),
        "source_tool": source_tool,
        "event_type": event_type,
        "payload": payload,
        "envelope_version": dict(ENVELOPE_VERSION),
        "priority": 5,
        "metadata": {},
    }


def parse_command(raw: bytes) -> tuple[dict[str, JsonValue], str | None]:
    """The input dict of a command message and its reply correlation id.

    Accepts an envelope (``{"payload": {...}, "correlation_id": ...}``) or a bare
    input dict (recognised by its top-level ``operation``).  An envelope's
    correlation id is given to an input that has none, so output and reply agree.
    """
    data: object = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("a command must be a JSON object")
    envelope_id = data.get("correlation_id")
    reply_id = str(envelope_id) if envelope_id is not None else None
    payload = data.get("payload")
    if "operation" in data or not isinstance(payload, dict):
        return data, reply_id
    command = dict(payload)
    if reply_id is not None and "correlation_id" not in command and _is_uuid(reply_id):
        command["correlation_id"] = reply_id
    return command, reply_id


def header(message: KafkaMessage, name: str) -> bytes | None:
    """The value of the one header ``name`` (lower case; keys match in any
    case); None when there is none, or several."""
    values = [value for key, value in message.headers() or [] if key.lower() == name]
    return values[0] if len(values) == 1 else None


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


async def in_daemon_thread(function: Callable[[], T]) -> T:
    """Run a blocking call in a daemon thread (exit never waits for it)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(T, result))

    def run() -> None:
        try:
            result = function()
        except BaseException as exc:
            outcome: tuple[T | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        # A closed loop means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="omninode-kafka", daemon=True).start()
    return await future


class _Assignment:
    """Whether a listener holds partitions; ``ready`` once a poll ran since."""

    def __init__(self) -> None:
        self.held = False
        self.ready = threading.Event()

    def on_assign(self, _consumer: object, partitions: list[Any]) -> None:
        self.held = bool(partitions)

    def on_revoke(self, _consumer: object, _partitions: list[Any]) -> None:
        self.held = False
        self.ready.clear()


class EventBus:
    """One node's Kafka producer and (optional) consumer, with a health state."""

    def __init__(
        self,
        *,
        servers: str | None,
        client_id: str,
        group_id: str,
        timeout_s: float = 5.0,
        clients: KafkaClients | None = None,
    ) -> None:
        """Prepare the bus; nothing connects before ``connect``."""
        self.servers = servers.strip() if servers and servers.strip() else None
        self.client_id = client_id
        self.group_id = group_id
        self.timeout_s = timeout_s
        self.state = EnumBusState.DEGRADED
        self.reason = "not connected yet"
        self.delivered = 0
        self.failed = 0
        self.consumed = 0
        self.assigned: list[int] = []
        self._clients = clients
        self._producer: KafkaProducer | None = None
        self._poller: asyncio.Task[None] | None = None
        self._consumer_thread: threading.Thread | None = None
        self._listeners: list[threading.Thread] = []
        self._stop_consuming = threading.Event()

    def set_state(self, state: EnumBusState, reason: str) -> None:
        """Change state; a change is logged once, not on every reconnect attempt."""
        if (state, reason) != (self.state, self.reason):
            level = logging.WARNING if state is EnumBusState.DEGRADED else logging.INFO
            log_event(
                _logger, level, "event_bus_state", state=state.value, reason=reason
            )
        self.state, self.reason = state, reason

    def stats(self) -> dict[str, JsonValue]:
        """State, reason and message counters."""
        return {
            "state": self.state.value,
            "reason": self.reason,
            "bootstrap_servers": self.servers,
            "delivered": self.delivered,
            "failed": self.failed,
            "consumed": self.consumed,
            "assigned_partitions": [*self.assigned],
        }

    def _config(self, **extra: object) -> dict[str, object]:
        timeout_ms = max(1_000, int(self.timeout_s * 1_000))
        return {
            "bootstrap.servers": self.servers,
            "client.id": self.client_id,
            "socket.timeout.ms": min(timeout_ms, 3_000),
            "socket.connection.setup.timeout.ms": min(timeout_ms, 3_000),
            "reconnect.backoff.max.ms": 2_000,
            "error_cb": self._on_error,
            "logger": logging.getLogger("omninode_runtime.kafka"),
            # Only critical client logs: an unreachable broker is reported once,
            # as a state change, instead of on every reconnect.
            "log_level": 2,
            **extra,
        }

    async def connect(self, topics: dict[str, int]) -> bool:
        """Create the producer and ``topics`` (name -> partitions); True when the
        broker answered."""
        if self.state is EnumBusState.DISABLED:
            return False
        if self._clients is None:
            self._clients = load_kafka_clients()
        if self.servers is None or self._clients is None:
            missing = (
                "no Kafka bootstrap servers configured"
                if self.servers is None
                else ("confluent_kafka is not installed")
            )
            self.set_state(
                EnumBusState.DEGRADED, f"{missing}; events are not published"
            )
            return False
        clients, servers = self._clients, self.servers
        try:
            if self._producer is None:
                self._producer = clients.producer(
                    self._config(
                        **{
                            "message.timeout.ms": int(self.timeout_s * 1_000),
                            "linger.ms": 5,
                        }
                    )
                )
                self._poller = asyncio.get_running_loop().create_task(
                    self._poll_producer()
                )
            config = self._config()
            await in_daemon_thread(
                lambda: clients.create_topics(config, topics, self.timeout_s)
            )
        except Exception as exc:
            self.set_state(EnumBusState.DEGRADED, f"Kafka at {servers} unusable: {exc}")
            return False
        self.set_state(EnumBusState.CONNECTED, f"connected to Kafka at {servers}")
        return True

    async def _poll_producer(self) -> None:
        while self._producer is not None:
            self._producer.poll(0)
            await asyncio.sleep(0.1)

    def publish(self, topic: str, key: str, value: JsonValue) -> bool:
        """Queue ``value`` on ``topic`` without waiting; False when not queued."""
        return self._produce(topic, key, value, self._on_delivery)

    async def publish_and_wait(self, topic: str, key: str, value: JsonValue) -> bool:
        """Publish and wait (bounded) for the broker's acknowledgement."""
        reports: list[object] = []

        def on_delivery(error: object, message: object) -> None:
            self._on_delivery(error, message)
            reports.append(error)

        if not self._produce(topic, key, value, on_delivery):
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s + 1.0
        while not reports and loop.time() < deadline and self._producer is not None:
            self._producer.poll(0)
            await asyncio.sleep(0.01)
        return bool(reports) and reports[0] is None

    def _produce(
        self, topic: str, key: str, value: JsonValue, on_delivery: DeliveryCallback
    ) -> bool:
        producer = self._producer
        if producer is None:
            return False
        traceparent = current_traceparent()
        headers = [(TRACEPARENT_HEADER, traceparent.encode())] if traceparent else None
        try:
            producer.produce(
                topic,
                value=canonical_json(value).encode("utf-8"),
                key=key.encode("utf-8"),
                on_delivery=on_delivery,
                headers=headers,
            )
        except Exception as exc:
            self.failed += 1
            self.set_state(
                EnumBusState.DEGRADED, f"cannot queue an event for {topic}: {exc}"
            )
            return False
        return True

    def _on_delivery(self, error: object, _message: object) -> None:
        if error is None:
            self.delivered += 1
            if self.state is EnumBusState.DEGRADED:
                self.set_state(
                    EnumBusState.CONNECTED, f"connected to Kafka at {self.servers}"
                )
        else:
            self.failed += 1
            self.set_state(EnumBusState.DEGRADED, f"event delivery failed: {error}")

    def _on_error(self, error: object) -> None:
        text = str(error)
        if "_ALL_BROKERS_DOWN" in text:
            self.set_state(
                EnumBusState.DEGRADED, f"Kafka broker unreachable at {self.servers}"
            )
        elif "fatal=True" in text:
            self.set_state(EnumBusState.DEGRADED, f"Kafka client error: {text}")
        else:
            log_event(_logger, logging.DEBUG, "kafka_client_error", error=text)

    def start_consumer(
        self,
        topic: str | list[str],
        on_message: MessageCallback,
        *,
        group_suffix: str = "",
    ) -> None:
        """Consume ``topic`` in a thread, handing each message to ``on_message``.

        Messages are processed one at a time, in order; ``on_message`` runs on
        the node's event loop, in a trace context continuing the message's
        ``traceparent`` header (a new trace without one).  The node's commands
        use its group; other inputs shared by its replicas (a reducer's
        sources) use the group plus ``group_suffix``, in a consumer of their
        own.
        """
        if self._clients is None:
            return
        if not group_suffix and self._consumer_thread is not None:
            return
        topics = [topic] if isinstance(topic, str) else list(topic)
        consumer = self._clients.consumer(
            self._config(
                **{
                    "group.id": self.group_id + group_suffix,
                    "auto.offset.reset": "earliest",
                    # An offset is stored once its message is processed; stored
                    # offsets are committed every second, on a rebalance and on
                    # close: replicas in the group neither skip nor repeat one.
                    "enable.auto.commit": True,
                    "enable.auto.offset.store": False,
                    "auto.commit.interval.ms": 1_000,
                    # A replica that vanished (killed, or stopped mid-join) holds up
                    # the group's next rebalance until its session times out: keep
                    # that short (Kafka's pre-3.0 default) so others take over soon.
                    "session.timeout.ms": 10_000,
                    "heartbeat.interval.ms": 2_000,
                }
            )
        )

        def on_assign(_consumer: object, partitions: list[Any]) -> None:
            self.assigned = sorted(int(p.partition) for p in partitions)
            log_event(
                _logger,
                logging.INFO,
                "partitions_assigned",
                partitions=[*self.assigned],
            )

        def on_revoke(_consumer: object, _partitions: list[Any]) -> None:
            self.assigned = []

        if group_suffix:
            # Only the command consumer's partitions are reported in health.
            consumer.subscribe(topics)
        else:
            consumer.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)
        loop = asyncio.get_running_loop()
        thread = threading.Thread(
            target=self._consume,
            args=(consumer, on_message, loop),
            name=f"omninode-consumer{group_suffix}",
            daemon=True,
        )
        if group_suffix:
            self._listeners.append(thread)
        else:
            self._consumer_thread = thread
        thread.start()

    def _consume(
        self,
        consumer: KafkaConsumer,
        on_message: MessageCallback,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        try:
            while not self._stop_consuming.is_set():
                message = consumer.poll(0.2)
                if message is None:
                    continue
                error = message.error()
                value = message.value()
                if error is not None or value is None:
                    log_event(
                        _logger, logging.DEBUG, "consumer_error", error=str(error)
                    )
                    continue
                self.consumed += 1
                # The coroutine's task copies this context: the message is
                # processed (and its failure logged) in the sender's trace.
                trace = continue_trace(header(message, TRACEPARENT_HEADER))
                with trace_scope(trace):
                    try:
                        future = asyncio.run_coroutine_threadsafe(
                            on_message(value), loop
                        )
                        future.result()
                    except Exception:
                        _logger.exception("processing a consumed message failed")
                consumer.store_offsets(message)
        except Exception:
            _logger.exception("the consumer stopped")
        finally:
            consumer.close()

    def start_listener(
        self, topics: list[str], group_id: str, on_message: MessageCallback
    ) -> threading.Event | None:
        """Read ``topics`` from their end, in a group of one, committing nothing.

        For replies to this instance: a restarted instance waits for no old
        message.  The returned event is set once partitions are assigned and a
        whole poll ran since (the end offsets are then known), so a message
        sent after it is seen; None when there is no Kafka client.
        """
        if self._clients is None:
            return None
        consumer = self._clients.consumer(
            self._config(
                **{
                    "group.id": group_id,
                    "auto.offset.reset": "latest",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "session.timeout.ms": 10_000,
                    "heartbeat.interval.ms": 2_000,
                }
            )
        )
        assignment = _Assignment()
        consumer.subscribe(
            topics, on_assign=assignment.on_assign, on_revoke=assignment.on_revoke
        )
        thread = threading.Thread(
            target=self._listen,
            args=(consumer, on_message, asyncio.get_running_loop(), assignment),
            name="omninode-listener",
            daemon=True,
        )
        self._listeners.append(thread)
        thread.start()
        return assignment.ready

    def _listen(
        self,
        consumer: KafkaConsumer,
        on_message: MessageCallback,
        loop: asyncio.AbstractEventLoop,
        assignment: _Assignment,
    ) -> None:
        try:
            while not self._stop_consuming.is_set():
                held = assignment.held
                message = consumer.poll(0.2)
                if held:
                    assignment.ready.set()
                value = message.value() if message is not None else None
                if message is None or message.error() is not None or value is None:
                    continue
                try:
                    asyncio.run_coroutine_threadsafe(on_message(value), loop).result()
                except Exception:
                    _logger.exception("processing a received message failed")
        except Exception:
            _logger.exception("the listener stopped")
        finally:
            consumer.close()

    async def close(self, flush_timeout_s: float) -> None:
        """Stop consuming and flush queued events, each step bounded in time."""
        self._stop_consuming.set()
        thread, self._consumer_thread = self._consumer_thread, None
        threads, self._listeners = self._listeners, []
        for joined in [*threads, *([thread] if thread is not None else [])]:
            await in_daemon_thread(functools.partial(joined.join, timeout=1.0))
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        producer, self._producer = self._producer, None
        if producer is not None:
            left = producer.flush(flush_timeout_s)
            if left:
                log_event(_logger, logging.WARNING, "events_not_delivered", count=left)
