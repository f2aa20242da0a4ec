"""Start a node whose files come flat, as a Kubernetes ConfigMap volume holds them.

A ConfigMap key cannot contain ``/``, so omninode-operator publishes a node's
files under keys with ``/`` written as ``-`` (``pkg-handlers-handler_x.py``);
its generated paths never contain ``-``.  Mapping every key back to its path in
the pod template would copy that list into every Deployment, ReplicaSet and
Pod; instead the ConfigMap is mounted whole and this module lays the package
out in a writable directory at start-up, then runs it as ``python -m`` would::

    python -m omninode_runtime.launch FILES_DIR PACKAGE [node options ...]
"""

import os
import runpy
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

EXIT_USAGE = 2
CODE_DIR_ENV = "OMNINODE_CODE_DIR"


def path_for(key: str) -> PurePosixPath:
    """The relative path a flat key stands for; ValueError for an unsafe one."""
    parts = key.split("-")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a relative file path: {key!r}")
    return PurePosixPath(*parts)


def lay_out(files: Path, destination: Path) -> list[PurePosixPath]:
    """Copy every file of the flat directory ``files`` to its path below
    ``destination``; the kubelet's own entries (``..data`` and the like) are
    skipped. Returns the paths written, sorted."""
    written: list[PurePosixPath] = []
    for entry in sorted(files.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        relative = path_for(entry.name)
        target = destination.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(entry.read_bytes())
        written.append(relative)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Lay the files out and run the package's ``__main__`` in this process."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] in ("-h", "--help"):
        print(
            "usage: python -m omninode_runtime.launch FILES_DIR PACKAGE [options]",
            file=sys.stderr,
        )
        return EXIT_USAGE
    files, package, options = Path(args[0]), args[1], args[2:]
    destination = Path(
        os.environ.get(CODE_DIR_ENV) or tempfile.mkdtemp(prefix="omninode-node-")
    )
    try:
        written = lay_out(files, destination)
    except (OSError, ValueError) as exc:
        print(f"cannot lay out {files}: {exc}", file=sys.stderr)
        return 1
    if PurePosixPath(package, "__main__.py") not in written:
        print(f"{files} holds no {package}/__main__.py", file=sys.stderr)
        return 1
    sys.path.insert(0, str(destination))
    sys.argv = [package, *options]
    runpy.run_module(package, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
