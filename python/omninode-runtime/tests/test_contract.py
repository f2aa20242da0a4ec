"""contract.yaml loading, the runtime version range, and what a bad contract says."""

import subprocess
import sys
from pathlib import Path

import pytest

from omninode_runtime import (
    RUNTIME_VERSION,
    ContractError,
    EnumNodeKind,
    NodeEffect,
    RuntimeVersionError,
    load_contract,
    version_satisfies,
)
from support import (
    FIXTURE_CONTRACT,
    SRC_DIR,
    TESTS_DIR,
    contract_data,
    fixture_contract_data,
    node_on,
    quiet_settings,
    write_contract,
)


def test_the_fixture_contract_loads_in_onex_shape() -> None:
    contract = load_contract(FIXTURE_CONTRACT)
    assert contract.kind is EnumNodeKind.EFFECT
    assert str(contract.node_version) == "1.2.3"
    assert contract.operations[:2] == ("insert_record", "update_record")
    assert contract.terminal_event == "onex.evt.test.fixture-writer-completed.v1"
    assert contract.introspection.member


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"node_type": "EFFECT"}, "node_type"),
        ({"contract_version": "one"}, "contract_version"),
        ({"handler_routing": {"handlers": []}}, "handlers"),
        ({"name": ""}, "name"),
    ],
)
def test_invalid_contracts_say_what_is_wrong(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    data = fixture_contract_data()
    data.update(change)
    with pytest.raises(ContractError, match=message):
        load_contract(write_contract(tmp_path, data))


def test_an_operation_routed_twice_is_refused(tmp_path: Path) -> None:
    data = contract_data("compute", [("a", "transform"), ("a", "transform")])
    with pytest.raises(ContractError, match="routed twice"):
        load_contract(write_contract(tmp_path, data))


def test_a_missing_or_non_mapping_contract_is_a_contract_error(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="cannot read"):
        load_contract(tmp_path / "contract.yaml")
    (tmp_path / "contract.yaml").write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ContractError, match="mapping"):
        load_contract(tmp_path / "contract.yaml")
    (tmp_path / "contract.yaml").write_text("a: [\n", encoding="utf-8")
    with pytest.raises(ContractError, match="not valid YAML"):
        load_contract(tmp_path / "contract.yaml")


def test_string_semver_is_read_as_a_mapping(tmp_path: Path) -> None:
    data = contract_data("compute", [("a", "transform")], node_version="2.5.1")
    assert str(load_contract(write_contract(tmp_path, data)).node_version) == "2.5.1"


@pytest.mark.parametrize(
    ("version", "requirement", "expected"),
    [
        ("0.1.0", ">=0.1.0,<0.2.0", True),
        ("0.2.0", ">=0.1.0,<0.2.0", False),
        ("0.1", "==0.1.0", True),
        ("1.0.0", "", True),
        ("1.0.0", "!=1.0.0", False),
        ("0.9.9", ">0.9.8, <=0.9.9", True),
    ],
)
def test_version_ranges(version: str, requirement: str, expected: bool) -> None:
    assert version_satisfies(version, requirement) is expected


def test_unsupported_version_clauses_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        version_satisfies("0.1.0", "~=0.1")
    with pytest.raises(ValueError, match="dotted-integer"):
        version_satisfies("0.1.0", ">=0.1.0rc1")


def test_a_node_outside_its_runtime_range_does_not_start(tmp_path: Path) -> None:
    data = fixture_contract_data()
    data["runtime"] = {"package": "omninode-runtime", "version": ">=9.0.0"}
    node_class = node_on(NodeEffect, write_contract(tmp_path, data))
    with pytest.raises(RuntimeVersionError, match=RUNTIME_VERSION):
        node_class(quiet_settings())


def test_the_cli_exits_3_and_writes_the_termination_log(tmp_path: Path) -> None:
    """The fixture_future node asks for runtime 0.2: exit 3 with a clear message."""
    log = tmp_path / "termination-log"
    log.write_text("", encoding="utf-8")
    env = {
        "PYTHONPATH": f"{SRC_DIR}:{TESTS_DIR}",
        "OMNINODE_TERMINATION_LOG": str(log),
        "PATH": "/usr/bin:/bin",
    }
    run = subprocess.run(
        [sys.executable, "-m", "fixture_future", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 3, run.stderr
    assert ">=0.2.0,<0.3.0" in run.stderr
    assert "use an image with a matching runtime" in log.read_text(encoding="utf-8")


def test_handlers_must_exist_and_be_async(tmp_path: Path) -> None:
    base = node_on(
        NodeEffect,
        write_contract(tmp_path, contract_data("effect", [("w", "not_async")])),
    )
    with pytest.raises(ContractError, match="async function"):
        base(quiet_settings())
    missing = node_on(
        NodeEffect,
        write_contract(tmp_path, contract_data("effect", [("w", "no_such_fn")])),
    )
    with pytest.raises(ContractError, match="has no 'no_such_fn'"):
        missing(quiet_settings())


def test_the_node_kind_must_match_the_contract(tmp_path: Path) -> None:
    node_class = node_on(
        NodeEffect,
        write_contract(tmp_path, contract_data("compute", [("t", "transform")])),
    )
    with pytest.raises(ContractError, match="COMPUTE_GENERIC"):
        node_class(quiet_settings())
