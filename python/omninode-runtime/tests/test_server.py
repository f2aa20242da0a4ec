"""The node as a process: ``python -m``, probes, /process, /metrics, SIGTERM."""

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from omninode_runtime.tracecontext import parse_traceparent
from support import SRC_DIR, TESTS_DIR, as_dict, http, http_json, start_node

GENERATION_TRACE = "0af7651916cd43dd8448eb211c80319c"
REQUEST_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def node_url() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env = {**os.environ, "PYTHONPATH": f"{SRC_DIR}:{TESTS_DIR}"}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    base, process = start_node("fixture_node", [], env)
    yield base, process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_probes_process_and_metrics(
    node_url: tuple[str, subprocess.Popen[str]],
) -> None:
    base, _ = node_url
    assert http("GET", base + "/health/live")[0] == 200
    status, ready = http_json("GET", base + "/health/ready")
    ready = as_dict(ready)
    # No broker configured: degraded but ready, and it says why.
    assert status == 200 and ready["status"] == "degraded", ready
    assert "no Kafka bootstrap servers" in str(ready["event_bus_reason"])
    status, body = http_json(
        "POST", base + "/process", {"operation": "insert_record", "payload": {"id": 7}}
    )
    assert status == 200 and as_dict(as_dict(body)["result"])["key"] == "7", body
    status, raw = http("GET", base + "/metrics")
    text = raw.decode()
    assert status == 200
    assert 'onex_node_requests_total{node="fixture_node"' in text, text
    assert http("GET", base + "/nowhere")[0] == 404


def test_bad_http_bodies_are_client_errors(
    node_url: tuple[str, subprocess.Popen[str]],
) -> None:
    base, _ = node_url
    assert http("POST", base + "/process", b"{not json")[0] == 400
    assert http("POST", base + "/process", b"[1, 2]")[0] == 400
    assert http("POST", base + "/process")[0] == 400
    status, body = http("POST", base + "/process", b'{"operation": "nope"}')
    assert status == 422 and json.loads(body)["success"] is False


def test_sigterm_stops_the_node_with_exit_0(
    node_url: tuple[str, subprocess.Popen[str]],
) -> None:
    _, process = node_url
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=10)
    assert process.returncode == 0, output
    assert time.monotonic() - started < 5
    events = [
        json.loads(line)["event"]
        for line in output.splitlines()
        if line.startswith("{")
    ]
    assert events[-2:] == ["node_stopping", "node_stopped"], events


def traceparent_of(url: str, body: bytes | None, traceparent: str | None) -> str | None:
    """The ``traceparent`` response header of one request."""
    headers = {"traceparent": traceparent} if traceparent else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        value = response.headers.get("traceparent")
        return str(value) if value is not None else None


def test_the_node_continues_the_traces_of_its_start_and_its_requests() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": f"{SRC_DIR}:{TESTS_DIR}",
        "TRACEPARENT": f"00-{GENERATION_TRACE}-b7ad6b7169203331-01",
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    base, process = start_node("fixture_node", [], env)
    try:
        body = json.dumps({"operation": "insert_record", "payload": {"id": 7}}).encode()
        sent = f"00-{REQUEST_TRACE}-00f067aa0ba902b7-01"
        answered = parse_traceparent(traceparent_of(base + "/process", body, sent))
        fresh = parse_traceparent(traceparent_of(base + "/process", body, None))
        probe = traceparent_of(base + "/health/live", None, sent)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    assert answered is not None and answered.trace_id == REQUEST_TRACE
    assert answered.span_id != "00f067aa0ba902b7"
    assert fresh is not None and fresh.trace_id not in (REQUEST_TRACE, GENERATION_TRACE)
    assert probe is None
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    (started,) = [line for line in lines if line["event"] == "node_started"]
    assert started["trace_id"] == GENERATION_TRACE, started
    assert started["span_id"] != "b7ad6b7169203331"
    processed = [line for line in lines if line["event"] == "request_processed"]
    assert [(p["trace_id"], p["span_id"]) for p in processed] == [
        (answered.trace_id, answered.span_id),
        (fresh.trace_id, fresh.span_id),
    ], processed
    assert all("trace_id" not in line for line in lines[-2:]), lines
