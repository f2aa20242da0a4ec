"""The node as a process: ``python -m``, probes, /process, /metrics, SIGTERM."""

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from support import SRC_DIR, TESTS_DIR, as_dict, http, http_json, start_node


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
