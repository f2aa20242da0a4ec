"""Operation dispatch through the four node kinds and the resilience mixins."""

from pathlib import Path
from uuid import uuid4

import pytest
from pydantic import JsonValue

import kind_handlers
from fixture_node.node import NodeFixtureWriterEffect
from omninode_runtime import (
    NodeCompute,
    NodeEffect,
    NodeOrchestrator,
    NodeReducer,
    NodeRuntime,
)
from support import (
    as_dict,
    as_list,
    contract_data,
    node_on,
    quiet_settings,
    run,
    write_contract,
)


def call(
    node: NodeRuntime, operation: str, **fields: object
) -> tuple[int, dict[str, JsonValue]]:
    """Start ``node`` if needed and process one JSON request."""

    async def go() -> tuple[int, dict[str, JsonValue]]:
        await node.start()
        return await node.process_json({"operation": operation, **fields})

    return run(go())


def fixture(**settings: object) -> NodeFixtureWriterEffect:
    return NodeFixtureWriterEffect(quiet_settings(**settings))


def test_each_operation_reaches_its_handler_and_records_persist() -> None:
    node = fixture()
    status, body = call(node, "insert_record", payload={"id": "r1", "total": 5})
    assert status == 200 and body["success"] is True, body
    result = as_dict(body["result"])
    assert result["key"] == "r1" and result["created"] is True
    status, body = call(node, "get_record", payload={"id": "r1"})
    assert as_dict(as_dict(body["result"])["record"]) == {"id": "r1", "total": 5}
    status, body = call(node, "delete_record", payload={"id": "r1"})
    assert as_dict(body["result"])["deleted"] is True


def test_unknown_operations_and_bad_input_are_422_with_reasons() -> None:
    node = fixture()
    status, body = call(node, "drop_tables")
    assert status == 422 and body["error"] == "invalid input"
    assert as_dict(as_list(body["details"])[0])["location"] == "operation"
    status, body = call(node, "insert_record", payload="not an object")
    assert status == 422 and body["error"] == "invalid input"
    assert as_dict(as_list(body["details"])[0])["location"] == "payload"
    status, body = call(node, "insert_record", payload={"__proto__": {"x": 1}})
    assert status == 422, body
    deep: dict[str, JsonValue] = {}
    cursor = deep
    for _ in range(40):
        cursor["d"] = {}
        cursor = as_dict(cursor["d"])
    status, body = call(node, "insert_record", payload=deep)
    assert status == 422 and "nested deeper" in str(body["error"]), body


def test_payload_size_is_limited() -> None:
    node = fixture(max_payload_bytes=64)
    status, body = call(node, "insert_record", payload={"blob": "x" * 100})
    assert status == 422 and "the limit is 64" in str(body["error"]), body


def test_handler_errors_keep_their_partial_result_and_crashes_are_500() -> None:
    node = fixture()
    status, body = call(node, "charge_card", payload={"amount": 500})
    assert status == 500 and body["error"] == "card declined"
    assert body["result"] == {"authorised": False, "amount": 500}
    status, body = call(node, "charge_card", payload={"amount": -1})
    assert status == 500 and "RuntimeError" in str(body["error"])
    health = node.get_health_status()
    assert as_dict(health["requests"]) == {"total": 2, "failed": 2}


def test_transient_failures_are_retried() -> None:
    node = fixture(retry_base_delay_s=0.0)
    status, body = call(node, "call_flaky_service", payload={"fail_times": 2})
    assert status == 200 and as_dict(body["result"])["attempts"] == 3, body
    status, body = call(node, "call_flaky_service", payload={"fail_times": 5})
    assert status == 500 and "ConnectionError" in str(body["error"]), body


def test_the_circuit_opens_after_repeated_failures() -> None:
    node = fixture(
        retry_max_attempts=1, circuit_failure_threshold=2, circuit_recovery_s=60
    )
    for _ in range(2):
        status, _ = call(node, "call_flaky_service", payload={"fail_times": 9})
        assert status == 500
    status, body = call(node, "insert_record", payload={"id": "x"})
    assert status == 500 and "circuit open" in str(body["error"]), body
    breaker = as_dict(
        as_dict(node.get_health_status()["mixins"])["MixinCircuitBreaker"]
    )
    assert breaker["state"] == "open" and breaker["rejections"] == 1


def test_effects_replay_the_first_result_for_a_correlation_id() -> None:
    node = fixture()
    cid = str(uuid4())
    _, first = call(node, "send_notification", correlation_id=cid, payload={"to": "a"})
    _, again = call(node, "send_notification", correlation_id=cid, payload={"to": "a"})
    first_result, again_result = as_dict(first["result"]), as_dict(again["result"])
    assert first_result["replayed"] is False and again_result["replayed"] is True
    assert first_result["sequence"] == again_result["sequence"]
    status, body = call(node, "insert_record", correlation_id=cid)
    assert status == 422 and "already used" in str(body["error"])


def test_operations_outside_the_routes_are_refused(tmp_path: Path) -> None:
    data = contract_data("effect", [("write", "write")])
    node = node_on(NodeEffect, write_contract(tmp_path, data))(quiet_settings())
    status, body = call(node, "drop_tables")
    assert status == 422
    assert "unsupported operation 'drop_tables'" in str(body["error"]), body


def test_handlers_must_return_a_dict(tmp_path: Path) -> None:
    data = contract_data("effect", [("bad", "not_a_dict")])
    node = node_on(NodeEffect, write_contract(tmp_path, data))(quiet_settings())
    status, body = call(node, "bad")
    assert status == 500 and "not a dict" in str(body["error"]), body


def test_compute_results_are_cached_when_the_contract_asks(tmp_path: Path) -> None:
    data = contract_data("compute", [("t", "transform")], mixins=["MixinCaching"])
    node = node_on(NodeCompute, write_contract(tmp_path, data))(quiet_settings())
    _, first = call(node, "t", payload={"B": 2, "a": [3, 1]})
    _, second = call(node, "t", payload={"B": 2, "a": [3, 1]})
    assert as_dict(first["result"])["cached"] is False
    assert as_dict(second["result"])["cached"] is True
    assert kind_handlers.CALLS == ["t"]


def test_reducers_fold_each_correlation_id_once(tmp_path: Path) -> None:
    handlers = [("fold", "fold"), ("read", "read_state"), ("reset", "reset_state")]
    data = contract_data("reducer", handlers)
    node = node_on(NodeReducer, write_contract(tmp_path, data))(quiet_settings())
    cid = str(uuid4())
    for _ in range(2):
        call(node, "fold", correlation_id=cid, payload={"amount": 2.5})
    call(node, "fold", payload={"amount": 1.0})
    _, body = call(node, "read")
    state = as_dict(as_dict(body["result"])["state"])
    assert state["reductions"] == 2, state
    assert as_dict(as_dict(state["numeric"])["amount"])["sum"] == 3.5, state
    _, body = call(node, "reset")
    assert as_dict(as_dict(body["result"])["state"])["reductions"] == 0


def orchestrator(
    tmp_path: Path, steps: list[tuple[str, str]], **extra: object
) -> NodeRuntime:
    data = contract_data("orchestrator", steps, **extra)
    return node_on(NodeOrchestrator, write_contract(tmp_path, data))(quiet_settings())


def test_orchestrators_run_the_steps_in_contract_order(tmp_path: Path) -> None:
    node = orchestrator(tmp_path, [("a", "step"), ("b", "step"), ("c", "step")])
    status, body = call(node, "a", payload={"order": 1})
    result = as_dict(body["result"])
    assert status == 200 and result["completed_steps"] == 3, body
    steps = [as_dict(s) for s in as_list(result["steps"])]
    assert [s["step"] for s in steps] == ["a", "b", "c"]
    assert as_dict(steps[2]["output"])["previous_steps"] == ["a", "b"]
    _, from_b = call(node, "b")
    assert as_dict(from_b["result"])["total_steps"] == 2


def test_a_failed_step_skips_the_rest_and_reports_it(tmp_path: Path) -> None:
    node = orchestrator(tmp_path, [("a", "step"), ("b", "explode"), ("c", "step")])
    status, body = call(node, "a")
    assert status == 500 and "workflow step 'b' failed" in str(body["error"])
    steps = [as_dict(s) for s in as_list(as_dict(body["result"])["steps"])]
    assert [s["status"] for s in steps] == ["completed", "failed", "skipped"]


def test_a_workflow_is_bounded_by_its_timeout(tmp_path: Path) -> None:
    node = orchestrator(
        tmp_path,
        [("a", "step"), ("slow", "dawdle")],
        performance={"workflow_timeout_ms": 100},
    )
    status, body = call(node, "a")
    assert status == 500 and "workflow_timeout_ms=100" in str(body["error"])
    steps = [as_dict(s) for s in as_list(as_dict(body["result"])["steps"])]
    assert steps[1]["status"] == "timed_out"


def test_metrics_count_requests_by_operation_and_outcome() -> None:
    node = fixture()
    call(node, "insert_record", payload={"id": "m"})
    call(node, "charge_card", payload={"amount": 500})
    text = node.render_metrics()
    assert 'operation="insert_record",outcome="success"} 1' in text, text
    assert 'operation="charge_card",outcome="error"} 1' in text, text
    assert "onex_node_up{" in text


@pytest.mark.parametrize("kind", ["effect", "compute", "reducer", "orchestrator"])
def test_health_names_the_kind(tmp_path: Path, kind: str) -> None:
    base: dict[str, type[NodeRuntime]] = {
        "effect": NodeEffect,
        "compute": NodeCompute,
        "reducer": NodeReducer,
        "orchestrator": NodeOrchestrator,
    }
    data = contract_data(kind, [("op", "step")])
    node = node_on(base[kind], write_contract(tmp_path, data))(quiet_settings())
    assert node.get_health_status()["ready"] is False
    run(node.start())
    health = node.get_health_status()
    assert health["node_type"] == kind and health["ready"] is True, health
    assert health["event_bus"] == "disabled"
