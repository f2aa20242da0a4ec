"""Helpers for the tests: contracts written on the fly, and nodes built on them."""

import asyncio
import copy
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TypeVar, cast

import yaml
from pydantic import JsonValue

from omninode_runtime import ModelNodeSettings, NodeRuntime

N = TypeVar("N", bound=NodeRuntime)
T = TypeVar("T")
TESTS_DIR = Path(__file__).resolve().parent
SRC_DIR = TESTS_DIR.parent / "src"
FIXTURE_CONTRACT = TESTS_DIR / "fixture_node" / "contract.yaml"
NODE_TYPES = {
    "effect": "EFFECT_GENERIC",
    "compute": "COMPUTE_GENERIC",
    "reducer": "REDUCER_GENERIC",
    "orchestrator": "ORCHESTRATOR_GENERIC",
}


def contract_data(
    kind: str,
    handlers: Sequence[tuple[str, str]],
    **overrides: object,
) -> dict[str, object]:
    """A minimal valid contract routing each ``(operation, kind_handlers fn)``."""
    data: dict[str, object] = {
        "name": f"test_{kind}_node",
        "contract_version": {"major": 1, "minor": 0, "patch": 0},
        "node_version": {"major": 0, "minor": 3, "patch": 1},
        "node_type": NODE_TYPES[kind],
        "description": f"A {kind} node built by the tests.",
        "input_model": {"name": "ModelNodeInput", "module": "omninode_runtime.models"},
        "output_model": {
            "name": "ModelNodeOutput",
            "module": "omninode_runtime.models",
        },
        "handler_routing": {
            "routing_strategy": "operation_match",
            "handlers": [
                {
                    "operation": operation,
                    "handler": {"function": function, "module": "kind_handlers"},
                }
                for operation, function in handlers
            ],
        },
        "event_bus": {"subscribe_topics": [], "publish_topics": []},
        "runtime": {"package": "omninode-runtime", "version": ">=0.1.0,<0.2.0"},
    }
    data.update(copy.deepcopy(overrides))
    return data


def write_contract(directory: Path, data: dict[str, object]) -> Path:
    """Write ``data`` as ``directory/contract.yaml``."""
    path = directory / "contract.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def node_on(base: type[N], contract: Path) -> type[N]:
    """A subclass of ``base`` that reads ``contract`` instead of its neighbour."""

    def contract_path(cls: type[N]) -> Path:
        return contract

    attributes = {"contract_path": classmethod(contract_path)}
    return cast(type[N], type(f"Test{base.__name__}", (base,), attributes))


def fixture_contract_data() -> dict[str, object]:
    """The fixture node's contract as a dict, to vary in a test."""
    data: object = yaml.safe_load(FIXTURE_CONTRACT.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def quiet_settings(**values: object) -> ModelNodeSettings:
    """Settings for in-process tests: no event bus, a fixed replica."""
    base: dict[str, object] = {"skip_event_bus": True, "replica": "test-0"}
    return ModelNodeSettings.model_validate({**base, **values})


def run(coroutine: Coroutine[object, object, T]) -> T:
    """Run ``coroutine`` on a fresh event loop."""
    return asyncio.run(coroutine)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_node(
    module: str, args: Sequence[str], env: dict[str, str]
) -> tuple[str, "subprocess.Popen[str]"]:
    """``python -m module *args --host 127.0.0.1 --port P``, live within 10 s:
    its base URL and process (output piped, merged)."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            *args,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            if http("GET", base + "/health/live")[0] == 200:
                return base, process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output, _ = process.communicate()
            raise AssertionError(f"{module} did not come up:\n{output}")
        time.sleep(0.05)


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """``(status, body)`` of one HTTP request (errors are answers, not raises)."""
    request = urllib.request.Request(
        url, data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def http_json(method: str, url: str, data: JsonValue = None) -> tuple[int, JsonValue]:
    """An HTTP request with an optional JSON body; the decoded JSON answer."""
    body = None if data is None else json.dumps(data).encode("utf-8")
    headers = {"Content-Type": "application/json"} if body is not None else {}
    status, raw = http(method, url, body, headers)
    decoded: JsonValue = json.loads(raw)
    return status, decoded


def as_dict(value: JsonValue) -> dict[str, JsonValue]:
    """``value``, asserted to be a JSON object (narrows the type for mypy)."""
    assert isinstance(value, dict), value
    return value


def as_list(value: JsonValue) -> list[JsonValue]:
    """``value``, asserted to be a JSON array."""
    assert isinstance(value, list), value
    return value
