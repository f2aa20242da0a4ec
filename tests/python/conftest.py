"""Shared fixtures: the operator binary, generated trees, and a real Kafka broker (tansu)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from nodecheck import free_port

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = Path(os.environ.get("OMNINODE_BIN", ROOT / "target" / "debug" / "omninode-operator"))
INTROSPECTION_TOPIC = "onex.evt.platform.node-introspection.v1"

_generated: dict[str, Path] = {}
_tmp_root = Path(tempfile.mkdtemp(prefix="omninode-tests-"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_tmp_root, ignore_errors=True)


def generate(inputs: list[Path], out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert OPERATOR.exists(), f"{OPERATOR} not built (cargo build) or OMNINODE_BIN not set"
    return subprocess.run(
        [str(OPERATOR), "generate", *map(str, inputs), "--output", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def examples_output() -> Path:
    """The examples generated once per session."""
    if "examples" not in _generated:
        out = _tmp_root / "examples"
        result = generate(sorted((ROOT / "examples").glob("*.yaml")), out)
        assert result.returncode == 0, result.stdout + result.stderr
        _generated["examples"] = out
    return _generated["examples"]


def example_nodes() -> list[Path]:
    return sorted(p for p in examples_output().glob("*/node_*") if p.is_dir())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "example_node" in metafunc.fixturenames:
        nodes = example_nodes()
        metafunc.parametrize("example_node", nodes, ids=[f"{n.parent.name}/{n.name}" for n in nodes])


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A real Kafka broker on loopback with the introspection topic created."""
    with tansu_broker() as servers:
        yield servers


@contextmanager
def tansu_broker() -> Iterator[str]:
    """Start tansu on a free loopback port (skips, or fails under CI, when it is not installed)."""
    tansu = os.environ.get("TANSU_BIN") or shutil.which("tansu")
    if not tansu:
        if os.environ.get("CI"):
            pytest.fail("TANSU_BIN is not set; scripts/test-all.sh installs the broker")
        pytest.skip("no Kafka broker: set TANSU_BIN (scripts/test-all.sh installs tansu)")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    # SQLite storage, on tmpfs when there is one: tansu's in-memory engine can leave the newest
    # records of concurrent produces invisible (tests/support/kafka.rs says more).
    shm = Path("/dev/shm")
    storage = tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None)
    proc = subprocess.Popen(
        [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "sqlite://tansu.db"],
        cwd=storage.name,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers = f"127.0.0.1:{port}"
    try:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": servers})
        deadline = time.monotonic() + 20
        while True:
            futures = admin.create_topics([NewTopic(INTROSPECTION_TOPIC, num_partitions=1, replication_factor=1)])
            try:
                futures[INTROSPECTION_TOPIC].result(timeout=5)
                break
            except Exception as e:
                if "TOPIC_ALREADY_EXISTS" in str(e) or "already exists" in str(e):
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield servers
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        storage.cleanup()
