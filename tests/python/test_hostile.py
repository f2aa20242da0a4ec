"""Hostile inputs fail cleanly or produce nodes that still pass every check (check 4).

tests/corpus/hostile/README.md says per file whether it must be rejected, must generate, or may
do either; a 5 MB PRD is made here rather than committed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, generate
from nodecheck import check_runs, check_shared_static, check_static, runtime_python, shared_dirs

CORPUS = ROOT / "tests" / "corpus" / "hostile"
CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def expectations() -> dict[str, str]:
    rows = {}
    for line in (CORPUS / "README.md").read_text().splitlines():
        m = re.match(r"^\|\s*`([^`]+)`\s*\|\s*(reject|generate|either)\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


EXPECTED = expectations()
FILES = sorted(p.name for p in CORPUS.iterdir() if p.name != "README.md")


def test_every_corpus_file_has_an_expectation() -> None:
    assert len(FILES) >= 30
    assert sorted(EXPECTED) == FILES


def huge_prd(path: Path) -> Path:
    line = "- Write the order record to PostgreSQL and notify the customer by email\n"
    text = "# Huge PRD\n\n## Functional Requirements\n" + line * (5 * 1024 * 1024 // len(line) + 1)
    path.write_text(text)
    assert path.stat().st_size >= 5 * 1024 * 1024
    return path


def run_and_check(inputs: list[Path], out: Path, expected: str) -> list[Path]:
    """Generate; assert a clean outcome; return the node directories produced."""
    result = generate(inputs, out)
    assert result.returncode in (0, 1), f"exit {result.returncode}:\n{result.stderr}"
    assert "panicked" not in result.stderr, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    assert docs, f"nothing printed:\n{result.stderr}"
    nodes: list[Path] = []
    written: set[str] = set()
    for doc in docs:
        ready = next(c for c in doc["status"]["conditions"] if c["type"] == "Ready")
        target = out / doc["metadata"]["name"]
        if ready["status"] == "True":
            assert expected in ("generate", "either"), f"{doc['metadata']['name']} should have been rejected"
            assert target.is_dir()
            written.add(doc["metadata"]["name"])
            nodes.extend(sorted(p for p in target.glob("node_*") if p.is_dir()))
        else:
            assert expected in ("reject", "either"), f"rejected: {ready}"
            assert CAMEL.match(ready["reason"]), ready
            assert ready["message"].strip(), ready
            assert doc["status"]["phase"] == "Failed"
            if doc["metadata"]["name"] not in written:
                assert not target.exists(), f"{target} written for a failed generation"
    assert result.returncode == (0 if all(
        next(c for c in d["status"]["conditions"] if c["type"] == "Ready")["status"] == "True" for d in docs
    ) else 1)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")] if out.exists() else []
    assert not leftovers, f"partial output left behind: {leftovers}"
    return nodes


@pytest.mark.parametrize("name", FILES)
def test_hostile_input(name: str, tmp_path: Path) -> None:
    nodes = run_and_check([CORPUS / name], tmp_path / "out", EXPECTED.get(name, "either"))
    for node in nodes:
        check_static(node)
        check_runs(node)
    for shared in sorted({d for n in nodes for d in shared_dirs(n)}):
        check_shared_static(shared, runtime_python(nodes[0]))


def test_five_megabyte_prd_is_rejected_cleanly(tmp_path: Path) -> None:
    md = huge_prd(tmp_path / "huge.md")
    run_and_check([md], tmp_path / "out", "reject")
    manifest = tmp_path / "huge.yaml"
    body = "\n".join("    " + line for line in md.read_text().splitlines())
    manifest.write_text(
        "apiVersion: codegen.omninode.ai/v1alpha1\nkind: NodeGeneration\nmetadata:\n  name: huge\nspec:\n  prd: |\n" + body + "\n"
    )
    run_and_check([manifest], tmp_path / "out2", "reject")
