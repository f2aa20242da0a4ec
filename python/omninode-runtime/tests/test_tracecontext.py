"""W3C trace context: parsing, and its propagation through a node.

A node continues the trace of what it receives (the ``TRACEPARENT`` of its
start-up, a command's ``traceparent`` header), logs ``trace_id`` and
``span_id``, and hands its own context on with what it publishes.
"""

import asyncio
import json
import logging
from collections.abc import Iterator
from uuid import uuid4

import pytest
from pydantic import JsonValue

from fake_kafka import FakeBroker
from fixture_node.node import NodeFixtureWriterEffect
from omninode_runtime import ModelNodeSettings
from omninode_runtime.logs import JsonLogFormatter, TextLogFormatter, log_event
from omninode_runtime.tracecontext import (
    TraceContext,
    child_of,
    continue_trace,
    current_trace,
    current_traceparent,
    format_traceparent,
    new_root,
    parse_traceparent,
    trace_scope,
)
from support import run

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
PARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
COMMANDS = "onex.cmd.test.fixture-writer.v1"
RESULTS = "onex.evt.test.fixture-writer-completed.v1"
INTROSPECTION = "onex.evt.platform.node-introspection.v1"
Line = dict[str, JsonValue]


def test_a_traceparent_round_trips() -> None:
    parsed = parse_traceparent(PARENT)
    assert parsed == TraceContext(TRACE_ID, SPAN_ID, 1)
    assert format_traceparent(parsed) == parsed.traceparent == PARENT
    unsampled = f"00-{TRACE_ID}-{SPAN_ID}-00"
    assert parse_traceparent(unsampled.encode()) == TraceContext(TRACE_ID, SPAN_ID, 0)
    root = new_root()
    assert parse_traceparent(root.traceparent) == root


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        b"\xff" * 55,
        PARENT[:-1],
        PARENT + "0",
        PARENT + "-extra",  # only a later version may append fields
        PARENT.upper(),
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-0A",
        f"00-{TRACE_ID[:-1]}g-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID[:-1]}z-01",
        f"00-{'0' * 32}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"ff-{TRACE_ID}-{SPAN_ID}-01",
        f"0x-{TRACE_ID}-{SPAN_ID}-01",
        f"00_{TRACE_ID}_{SPAN_ID}_01",
        f"00-{TRACE_ID}{SPAN_ID}-01",
        f"01-{TRACE_ID}-{SPAN_ID}-01x",
        f"00-{TRACE_ID}-{SPAN_ID}-01\n",
    ],
)
def test_invalid_traceparents_are_refused(value: str | bytes | None) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_as_far_as_version_00_goes() -> None:
    expected = TraceContext(TRACE_ID, SPAN_ID, 1)
    assert parse_traceparent(f"01-{TRACE_ID}-{SPAN_ID}-01-more") == expected
    assert parse_traceparent(f"cc-{TRACE_ID}-{SPAN_ID}-01") == expected
    # Optional whitespace around an HTTP field value is no part of it.
    assert parse_traceparent(f" {PARENT}\t") == expected


def test_a_child_keeps_the_trace_and_gets_a_span_of_its_own() -> None:
    parent = TraceContext(TRACE_ID, SPAN_ID, 0)
    child = child_of(parent)
    assert (child.trace_id, child.flags) == (TRACE_ID, 0)
    assert child.span_id != SPAN_ID and parse_traceparent(child.traceparent) == child
    assert child_of(parent).span_id != child.span_id
    continued = continue_trace(PARENT)
    assert continued.trace_id == TRACE_ID and continued.span_id != SPAN_ID
    fresh = continue_trace("garbage")
    assert fresh.trace_id != TRACE_ID and fresh.flags == 1
    assert new_root().trace_id != new_root().trace_id


def test_a_scope_sets_the_current_context_and_restores_it() -> None:
    outer, inner = new_root(), new_root()
    assert current_trace() is None and current_traceparent() is None
    with trace_scope(outer):
        with trace_scope(inner):
            assert current_trace() == inner
        assert current_traceparent() == outer.traceparent
        with trace_scope(None):
            assert current_trace() is None
    assert current_trace() is None


def test_log_lines_carry_the_trace_in_both_formats() -> None:
    logger = logging.getLogger("test.trace")
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "ev", (), None)
    context = TraceContext(TRACE_ID, SPAN_ID)
    assert "trace_id" not in json.loads(JsonLogFormatter().format(record))
    with trace_scope(context):
        line = json.loads(JsonLogFormatter().format(record))
        text = TextLogFormatter().format(record)
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, SPAN_ID)
    assert f'trace_id="{TRACE_ID}" span_id="{SPAN_ID}"' in text


class JsonLines(logging.Handler):
    """Formats each record as it is written (the context is read then)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonLogFormatter())
        self.lines: list[Line] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def events(self, event: str) -> list[Line]:
        return [line for line in self.lines if line["event"] == event]


@pytest.fixture
def logs() -> Iterator[JsonLines]:
    root = logging.getLogger()
    handler, level = JsonLines(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def writer(broker: FakeBroker, traceparent: str | None) -> NodeFixtureWriterEffect:
    settings = ModelNodeSettings(
        kafka_servers="fake:9092",
        replica="pod-0",
        namespace="ns",
        traceparent=traceparent,
    )
    return NodeFixtureWriterEffect(settings, kafka_clients=broker)


async def wait_for(broker: FakeBroker, topic: str, count: int = 1) -> None:
    for _ in range(300):
        if len(broker.on(topic)) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nothing on {topic}: {broker.sent}")


def answer_one_command(headers: list[tuple[str, bytes]] | None) -> FakeBroker:
    """The fixture node's answer to one insert_record command on its topic."""
    broker = FakeBroker()
    node = writer(broker, None)
    command: JsonValue = {
        "correlation_id": str(uuid4()),
        "payload": {"operation": "insert_record", "payload": {"id": "k"}},
    }

    async def go() -> None:
        await node.start()
        broker.publish(COMMANDS, "k", command, headers)
        try:
            await wait_for(broker, RESULTS)
        finally:
            await node.stop()

    run(go())
    return broker


def test_a_command_continues_the_trace_of_its_header(logs: JsonLines) -> None:
    broker = answer_one_command([("traceparent", PARENT.encode())])
    (processed,) = logs.events("request_processed")
    assert processed["trace_id"] == TRACE_ID and processed["span_id"] != SPAN_ID
    (reply,) = broker.traceparents(RESULTS)
    context = parse_traceparent(reply)
    assert context is not None and context.trace_id == TRACE_ID
    # The reply's parent is the span the node processed the command in.
    assert context.span_id == processed["span_id"]


def test_a_command_without_a_valid_header_starts_a_trace(logs: JsonLines) -> None:
    for headers in (None, [("traceparent", b"00-nonsense")]):
        logs.lines.clear()
        broker = answer_one_command(headers)
        (processed,) = logs.events("request_processed")
        (reply,) = broker.traceparents(RESULTS)
        context = parse_traceparent(reply)
        assert context is not None and context.trace_id != TRACE_ID
        assert (context.trace_id, context.span_id) == (
            processed["trace_id"],
            processed["span_id"],
        )


def test_start_up_continues_the_generations_trace(logs: JsonLines) -> None:
    broker = FakeBroker()
    node = writer(broker, PARENT)

    async def go() -> None:
        await node.start()
        try:
            await wait_for(broker, INTROSPECTION)
            # Outside the start-up (an HTTP request, say) there is no trace.
            log_event(logging.getLogger("test"), logging.INFO, "after_start")
        finally:
            await node.stop()

    run(go())
    startup = node.startup_trace
    assert startup is not None and startup.trace_id == TRACE_ID
    assert startup.span_id != SPAN_ID
    announce, goodbye = broker.traceparents(INTROSPECTION)
    assert announce == startup.traceparent
    assert goodbye is None  # stopping is no part of the start-up
    (joined,) = [
        line for line in logs.events("event_bus_state") if line["state"] == "connected"
    ]
    assert (joined["trace_id"], joined["span_id"]) == (TRACE_ID, startup.span_id)
    assert "trace_id" not in logs.events("after_start")[0]


def test_an_invalid_startup_traceparent_is_a_warning_only(logs: JsonLines) -> None:
    broker = FakeBroker()
    node = writer(broker, "00-not-a-trace")

    async def go() -> None:
        await node.start()
        try:
            await wait_for(broker, INTROSPECTION)
        finally:
            await node.stop()

    run(go())
    assert node.startup_trace is None
    assert broker.traceparents(INTROSPECTION) == [None, None]
    (warning,) = logs.events("startup_traceparent_invalid")
    assert warning["level"] == "warning" and warning["traceparent"] == "00-not-a-trace"


def test_settings_read_traceparent_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACEPARENT", PARENT)
    assert ModelNodeSettings().traceparent == PARENT
    monkeypatch.setenv("TRACEPARENT", "")
    assert ModelNodeSettings().traceparent is None
