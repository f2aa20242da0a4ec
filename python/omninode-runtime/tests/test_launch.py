"""A node started from flat files, the way its Deployment mounts a code ConfigMap."""

import os
import signal
from pathlib import Path, PurePosixPath

import pytest

from omninode_runtime.launch import lay_out, main, path_for
from support import SRC_DIR, TESTS_DIR, as_dict, http_json, start_node


def flatten(package_dir: Path, into: Path) -> None:
    """The package's files as a ConfigMap volume shows them: ``/`` written as ``-``."""
    root = package_dir.parent
    for file in package_dir.rglob("*"):
        if file.is_file() and "__pycache__" not in file.parts:
            key = file.relative_to(root).as_posix().replace("/", "-")
            (into / key).write_bytes(file.read_bytes())


def test_keys_map_back_to_safe_relative_paths() -> None:
    assert path_for("pkg-handlers-handler_x.py") == PurePosixPath(
        "pkg/handlers/handler_x.py"
    )
    for bad in ("-etc-passwd", "pkg--x.py", "pkg-..-x.py", "..", "pkg-.-x"):
        with pytest.raises(ValueError, match="not a relative file path"):
            path_for(bad)


def test_the_kubelets_own_entries_are_skipped(tmp_path: Path) -> None:
    files, out = tmp_path / "files", tmp_path / "out"
    (files / "..2026_12_04").mkdir(parents=True)
    (files / "..data").symlink_to("..2026_12_04")
    (files / "..2026_12_04" / "pkg-a.py").write_text("A = 1\n")
    (files / "pkg-a.py").symlink_to("..data/pkg-a.py")
    assert lay_out(files, out) == [PurePosixPath("pkg/a.py")]
    assert (out / "pkg" / "a.py").read_text() == "A = 1\n"


def test_usage_and_missing_packages_are_errors(tmp_path: Path) -> None:
    assert main([]) == 2
    (tmp_path / "other-__main__.py").write_text("")
    os.environ["OMNINODE_CODE_DIR"] = str(tmp_path / "out")
    try:
        assert main([str(tmp_path), "fixture_node"]) == 1
    finally:
        del os.environ["OMNINODE_CODE_DIR"]


def test_a_node_runs_from_flat_files(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    flatten(TESTS_DIR / "fixture_node", files)
    # Only the runtime on the path: the package comes from the flat files alone.
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    base, process = start_node(
        "omninode_runtime.launch", [str(files), "fixture_node"], env
    )
    try:
        status, body = http_json(
            "POST", base + "/process", {"operation": "get_record", "payload": {"id": 1}}
        )
        assert status == 200, body
        assert as_dict(as_dict(body)["result"])["found"] is False
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
