"""Checks every generated node must pass: it parses, lints, type-checks, imports, passes its own
tests, starts, answers its health probes and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Self

BIN = Path(sys.executable).parent
MYPY_CACHE = Path(os.environ.get("OMNINODE_MYPY_CACHE", Path.home() / ".cache" / "omninode-operator" / "mypy"))


def run(
    cmd: list[str], cwd: Path, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def assert_ok(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"


_runtime_envs: dict[Path, Path] = {}


def base_python() -> str:
    """The interpreter the tooling venv was made from: fresh venvs start from it."""
    return str(getattr(sys, "_base_executable", sys.executable))


def runtime_dir(node_dir: Path) -> Path:
    """OUT/_runtime of the `generate --output OUT` that wrote `node_dir` (OUT/<generation>/<node>)."""
    found = node_dir.parents[1] / "_runtime"
    assert any(found.glob("omninode_runtime-*.whl")), f"no runtime wheel in {found}"
    return found


def runtime_python(node_dir: Path) -> Path:
    """A fresh venv holding only the runtime (with its Kafka extra, from OUT/_runtime) and pytest:
    what the node-runtime image holds. Made once per session; nodes run in it from their own
    directory on PYTHONPATH, as in a pod."""
    wheels = runtime_dir(node_dir)
    key = next(iter(sorted(wheels.glob("*.whl"))))
    digest = key.read_bytes()
    for known, python in _runtime_envs.items():
        if known.read_bytes() == digest:
            return python
    venv = Path(os.environ.get("OMNINODE_TEST_TMP", "/tmp")) / f"omninode-runtime-venv-{os.getpid()}-{len(_runtime_envs)}"
    assert_ok(run([base_python(), "-m", "venv", "--clear", str(venv)], node_dir), "venv")
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    assert_ok(run([*pip, "--find-links", str(wheels), "omninode-runtime[kafka]", "pytest"], node_dir, 600), "pip install")
    _runtime_envs[key] = python
    return python


def package_of(node_dir: Path) -> str:
    """The node's Python package: the directory beside pyproject.toml with a __main__.py."""
    found = sorted(p.parent.name for p in node_dir.glob("*/__main__.py"))
    assert len(found) == 1, f"{node_dir}: expected one package with __main__.py, found {found}"
    return found[0]


def shared_dirs(node_dir: Path) -> list[Path]:
    """The shared models distributions of the node's system, beside it (OUT/<generation>/*_shared)."""
    return sorted(p for p in node_dir.parent.glob("*_shared") if (p / "pyproject.toml").is_file())


def code_path(node_dir: Path) -> str:
    """PYTHONPATH of a node run from its directory: the node, then its system's shared models."""
    return os.pathsep.join(str(p) for p in [node_dir, *shared_dirs(node_dir)])


def node_env(node_dir: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "PYTHONPATH")}
    environ["PYTHONPATH"] = code_path(node_dir)
    environ["PYTHONDONTWRITEBYTECODE"] = "1"
    return environ


def check_static(node_dir: Path) -> None:
    """py_compile, ruff, mypy --strict (against the installed runtime), import and the node's own
    tests, run by the runtime's interpreter with the node on PYTHONPATH."""
    python = runtime_python(node_dir)
    package = package_of(node_dir)
    sources = sorted(str(p.relative_to(node_dir)) for p in node_dir.rglob("*.py"))
    assert len(sources) >= 10, f"{node_dir}: only {len(sources)} Python files"
    assert_ok(run([sys.executable, "-m", "py_compile", *sources], node_dir), "py_compile")
    assert_ok(run([str(BIN / "ruff"), "check", "--no-cache", "."], node_dir), "ruff check")
    mypy = [str(BIN / "mypy"), "--strict", "--python-executable", str(python), "--cache-dir", str(MYPY_CACHE), package]
    env = node_env(node_dir)
    assert_ok(run(mypy, node_dir, env={**env, "MYPYPATH": env["PYTHONPATH"]}), "mypy --strict")
    imp = subprocess.run(
        [str(python), "-c", f"import {package}.node, {package}.handlers"], cwd=node_dir, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert_ok(imp, "import")
    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", f"{package}.tests"],
        cwd=node_dir, env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    assert_ok(tests, "the node's own tests")
    assert " passed" in tests.stdout, tests.stdout


def check_shared_static(shared_dir: Path, python: Path) -> None:
    """ruff and mypy --strict on a system's shared models distribution (python: an interpreter
    with pydantic, the one the nodes run on)."""
    package = shared_dir.name
    assert_ok(run([str(BIN / "ruff"), "check", "--no-cache", "."], shared_dir), f"ruff {package}")
    mypy = [str(BIN / "mypy"), "--strict", "--python-executable", str(python), "--cache-dir", str(MYPY_CACHE), package]
    assert_ok(run(mypy, shared_dir), f"mypy --strict {package}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Response:
    status: int
    body: str

    def json(self) -> dict[str, object]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


def get(url: str, timeout: float = 2.0) -> Response:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return Response(r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.read().decode())


def wait_for(url: str, deadline_s: float, status: int = 200) -> Response:
    end = time.monotonic() + deadline_s
    last: Exception | Response | None = None
    while time.monotonic() < end:
        try:
            last = get(url)
            if last.status == status:
                return last
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer {status} within {deadline_s}s (last: {last})")


def wait_for_event_bus(base: str, state: str, deadline_s: float) -> dict[str, object]:
    """Poll readiness until its body reports the event bus in `state`; return the last body."""
    end = time.monotonic() + deadline_s
    body: dict[str, object] = {}
    while time.monotonic() < end:
        body = wait_for(base + "/health/ready", 2.0).json()
        if body["event_bus"] == state:
            break
        time.sleep(0.1)
    return body


class RunningNode:
    """A node started with `python -m <package>` on a free loopback port, by the runtime's
    interpreter with the node's directory on PYTHONPATH (as the Deployment runs it), or by
    `python` when given (an installed node)."""

    def __init__(
        self,
        node_dir: Path,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        python: Path | None = None,
    ) -> None:
        self.port = free_port()
        package = package_of(node_dir)
        cwd = node_dir if python is None else Path("/")
        if python is None:
            python = runtime_python(node_dir)
            environ = node_env(node_dir)
        else:
            environ = {k: val for k, val in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "PYTHONPATH")}
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [str(python), "-m", package, "--host", "127.0.0.1", "--port", str(self.port), *(extra or [])],
            cwd=cwd,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self, deadline_s: float = 5.0) -> tuple[int, float, str]:
        """SIGTERM; returns the exit code, the seconds it took and the output."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"node did not exit within {deadline_s}s of SIGTERM:\n{out}") from None
        return self.proc.returncode, time.monotonic() - start, out

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def check_runs(node_dir: Path, extra: list[str] | None = None) -> dict[str, object]:
    """Start the node, probe live/ready/metrics within 5 s, SIGTERM, exit 0 within 5 s.
    Returns the readiness body."""
    with RunningNode(node_dir, extra) as node:
        started = time.monotonic()
        live = wait_for(node.base + "/health/live", 5.0)
        ready = wait_for(node.base + "/health/ready", 5.0 - (time.monotonic() - started) + 0.5)
        assert time.monotonic() - started <= 5.5, "health probes took longer than 5 s"
        live.json()
        body = ready.json()
        metrics = get(node.base + "/metrics")
        assert metrics.status == 200 and "# TYPE" in metrics.body
        assert get(node.base + "/no-such-path").status == 404
        code, took, out = node.stop()
        assert code == 0, f"exit code {code} after SIGTERM:\n{out}"
        assert took <= 5.0
        return body
