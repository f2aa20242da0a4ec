"""The Argo CD health checks (argocd/health) run by the real Lua 5.1 interpreter.

Argo CD runs a resource's health.lua with gopher-lua (Lua 5.1) and `obj` set to the live object;
health_test.yaml next to each script is Argo CD's own test format: per fixture, the expected
status and message. Each fixture is turned into a Lua table constructor and the script is run
by `lua5.1` ($LUA51, else on PATH; scripts/test-all.sh unpacks Debian's into the cache and sets
$LUA51_LIBRARY_PATH, added to LD_LIBRARY_PATH) with only the libraries Argo CD opens by default
(base and table: no string, io or os)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT

HEALTH = ROOT / "argocd" / "health" / "codegen.omninode.ai"
KINDS = ("NodeGeneration", "GeneratedNode")
DOCS = ROOT / "docs" / "argocd.md"
CM_KEY = "resource.customizations.health.codegen.omninode.ai_{kind}"
ARGO_STATUSES = {
    "Healthy",
    "Progressing",
    "Degraded",
    "Suspended",
    "Missing",
    "Unknown",
}


class KubeLoader(yaml.SafeLoader):
    """YAML as the API server reads it: timestamps stay strings."""


KubeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=KubeLoader)


def lua_string(s: str) -> str:
    """A Lua 5.1 string literal of the UTF-8 bytes of `s`: printable ASCII as is, everything
    else (quotes, backslash, newlines, control and non-ASCII bytes) as three-digit escapes."""
    out = []
    for byte in s.encode():
        if 0x20 <= byte < 0x7F and byte not in (ord('"'), ord("\\")):
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def lua_value(value: Any) -> str:
    """A Lua table constructor (or scalar) for a JSON-like value, as Argo CD hands it to the
    script: maps as ["key"]=value, lists as sequences, null fields left out."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) > 2**53:
            raise ValueError(f"{value} does not fit a Lua 5.1 number exactly")
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "(0/0)"
        if math.isinf(value):
            return "(1/0)" if value > 0 else "(-1/0)"
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, list):
        return "{" + ", ".join(lua_value(v) for v in value) + "}"
    if isinstance(value, dict):
        fields = []
        for key, v in value.items():
            if not isinstance(key, str):
                raise TypeError(f"map key {key!r} is not a string")
            if v is not None:
                fields.append(f"[{lua_string(key)}] = {lua_value(v)}")
        return "{" + ", ".join(fields) + "}"
    raise TypeError(f"no Lua value for {type(value).__name__}: {value!r}")


# Runs the health script the way Argo CD does: `obj` global, only base and table functions,
# no string methods; prints status, a newline, then the message.
DRIVER = """\
obj = {obj}
local script = assert(loadfile({script}))
local env = {{obj = obj, table = table}}
for _, name in ipairs({{"assert", "error", "ipairs", "next", "pairs", "pcall", "select",
    "tonumber", "tostring", "type", "unpack", "rawequal", "rawget", "rawset",
    "getmetatable", "setmetatable"}}) do
  env[name] = _G[name]
end
setfenv(script, env)
getmetatable("").__index = nil
local hs = script()
assert(type(hs) == "table", "the script returned " .. type(hs) .. ", not a table")
io.write(tostring(hs.status), "\\n", tostring(hs.message))
"""


@dataclass
class Lua:
    binary: str
    env: dict[str, str]

    def run(self, program: str, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
        source = tmp_path / "driver.lua"
        source.write_text(program)
        return subprocess.run(
            [self.binary, str(source)],
            capture_output=True,
            env=self.env,
            timeout=30,
            check=False,
        )

    def health(self, script: Path, obj: Any, tmp_path: Path) -> tuple[str, str]:
        program = DRIVER.format(obj=lua_value(obj), script=lua_string(str(script)))
        result = self.run(program, tmp_path)
        assert result.returncode == 0, f"{script} failed:\n{result.stderr.decode()}"
        status, _, message = result.stdout.decode().partition("\n")
        return status, message


@pytest.fixture(scope="session")
def lua() -> Lua:
    binary = os.environ.get("LUA51") or shutil.which("lua5.1")
    if not binary:
        if os.environ.get("CI"):
            pytest.fail(
                "no lua5.1: LUA51 is not set and lua5.1 is not on PATH; scripts/test-all.sh unpacks it"
            )
        pytest.skip(
            "no lua5.1: set LUA51 (scripts/test-all.sh unpacks Debian's lua5.1 into the cache)"
        )
    env = dict(os.environ)
    library_path = os.environ.get("LUA51_LIBRARY_PATH")
    if library_path:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (library_path, env.get("LD_LIBRARY_PATH")) if p
        )
    try:
        version = subprocess.run(
            [binary, "-e", "io.write(_VERSION)"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
    except OSError as e:
        pytest.fail(f"LUA51={binary} does not run: {e}")
    assert version.returncode == 0, f"{binary} does not run:\n{version.stderr}"
    assert version.stdout == "Lua 5.1", (
        f"{binary} is {version.stdout!r}, Argo CD runs Lua 5.1"
    )
    return Lua(binary, env)


def cases() -> list[Any]:
    out = []
    for kind in KINDS:
        for test in load(HEALTH / kind / "health_test.yaml")["tests"]:
            path = test["inputPath"]
            expected = test["healthStatus"]
            out.append(
                pytest.param(
                    kind,
                    path,
                    expected["status"],
                    expected["message"],
                    id=f"{kind}/{Path(path).stem}",
                )
            )
    return out


@pytest.mark.parametrize(("kind", "input_path", "status", "message"), cases())
def test_health(
    lua: Lua, tmp_path: Path, kind: str, input_path: str, status: str, message: str
) -> None:
    obj = load(HEALTH / kind / input_path)
    assert obj["kind"] == kind and obj["apiVersion"] == "codegen.omninode.ai/v1alpha1"
    assert status in ARGO_STATUSES
    assert lua.health(HEALTH / kind / "health.lua", obj, tmp_path) == (status, message)


@pytest.mark.parametrize("kind", KINDS)
def test_every_fixture_is_tested_and_every_status_covered(kind: str) -> None:
    tests = load(HEALTH / kind / "health_test.yaml")["tests"]
    listed = [t["inputPath"] for t in tests]
    on_disk = sorted(
        f"testdata/{p.name}" for p in (HEALTH / kind / "testdata").glob("*.yaml")
    )
    assert sorted(listed) == on_disk, "health_test.yaml and testdata/ disagree"
    assert len(set(listed)) == len(listed) >= 10
    statuses = {t["healthStatus"]["status"] for t in tests}
    wanted = {"Healthy", "Progressing", "Degraded"} | (
        {"Suspended"} if kind == "NodeGeneration" else set()
    )
    assert statuses == wanted


@pytest.mark.parametrize("kind", KINDS)
def test_docs_inline_each_script_verbatim(kind: str) -> None:
    """docs/argocd.md's argocd-cm snippet holds each script exactly (kept equal by hand)."""
    docs = DOCS.read_text(encoding="utf-8")
    script = (HEALTH / kind / "health.lua").read_text(encoding="utf-8")
    body = "\n".join(f"    {line}" if line else "" for line in script.splitlines())
    assert f"  {CM_KEY.format(kind=kind)}: |\n{body}\n" in docs, (
        f"docs/argocd.md does not inline argocd/health/codegen.omninode.ai/{kind}/health.lua"
        " verbatim (indented by four spaces under its argocd-cm key)"
    )
    blocks = re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL)
    config_maps = [
        d
        for block in blocks
        for d in yaml.safe_load_all(block)
        if isinstance(d, dict)
        and d.get("kind") == "ConfigMap"
        and d["metadata"]["name"] == "argocd-cm"
    ]
    assert len(config_maps) == 1
    assert config_maps[0]["data"][CM_KEY.format(kind=kind)] == script


def test_fixtures_reach_lua_intact(lua: Lua, tmp_path: Path) -> None:
    """The converter: escapes, sequences, maps with any key, booleans, numbers, nulls."""
    tricky = [
        'a "quoted" \\ back\\slash',
        "line\nbreak\r\ttab",
        "]]==]",
        "\x00nul\x7f",
        "ünïcödé ✓",
        "\\0012",
    ]
    obj = {
        "strings": tricky,
        "list": [1, False, "x"],
        "map": {"a.b/c": 1.5, "with space": -2, "": "empty key", "true": True},
        "gone": None,
        "big": 2**53,
    }
    program = f"""\
obj = {lua_value(obj)}
assert(#obj.list == 3 and obj.list[1] == 1 and obj.list[2] == false and obj.list[3] == "x")
assert(obj.map["a.b/c"] == 1.5 and obj.map["with space"] == -2 and obj.map[""] == "empty key")
assert(obj.map["true"] == true and obj.gone == nil and obj.big == 9007199254740992)
local n = 0
for _ in pairs(obj) do n = n + 1 end
assert(n == 4, "null fields must be left out")
io.write(table.concat(obj.strings, "\\255"))
"""
    result = lua.run(program, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.split(b"\xff") == [s.encode() for s in tricky]
    with pytest.raises(TypeError):
        lua_value({1: "not a string key"})
    with pytest.raises(ValueError):
        lua_value(2**53 + 1)
