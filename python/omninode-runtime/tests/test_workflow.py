"""System workflows: ``workflow_coordination`` steps run on sibling nodes.

The siblings are ``FakeSibling``s on an in-memory broker (and, once, the real
fixture node), so the commands, replies, retries and compensations the
orchestrator exchanges with them can be checked message by message.
"""

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from uuid import UUID, uuid4, uuid5

import pytest
from pydantic import JsonValue

import kind_handlers
from fake_kafka import Answer, Behaviour, Command, FakeBroker, FakeSibling
from fixture_node.node import NodeFixtureWriterEffect
from omninode_runtime import (
    ContractError,
    EnumNodeKind,
    ModelNodeSettings,
    NodeOrchestrator,
    load_contract,
)
from omninode_runtime.bus import EnumBusState, build_envelope
from omninode_runtime.tracecontext import parse_traceparent
from support import (
    FIXTURE_CONTRACT,
    as_dict,
    as_list,
    contract_data,
    node_on,
    run,
    write_contract,
)

ORCHESTRATOR = "node_test_review_orchestrator"
TERMINAL = "onex.evt.test.review-completed.v1"
HANDLERS = [
    ("run_review", "step"),
    ("open_review_case", "step"),
    ("close_review_case", "undo"),
    ("explode", "explode"),
]
Body = dict[str, JsonValue]


def cmd(name: str) -> str:
    return f"onex.cmd.test.{name}.v1"


def evt(name: str) -> str:
    return f"onex.evt.test.{name}-completed.v1"


def remote(name: str, *, depends_on: Sequence[str] = (), **extra: object) -> Body:
    """A step the sibling ``node_<name>`` runs (operation ``do_<name>``)."""
    step: dict[str, object] = {
        "step_name": name,
        "step_type": "effect",
        "node": f"node_{name}",
        "operation": f"do_{name}",
        "command_topic": cmd(name),
        "reply_topic": evt(name),
        "depends_on": list(depends_on),
        "timeout_ms": 2000,
        "retry_count": 0,
        **extra,
    }
    return as_dict(json.loads(json.dumps(step)))


def local(
    name: str, operation: str, *, depends_on: Sequence[str] = (), **extra: object
) -> Body:
    """A step the orchestrator runs with its own handler."""
    step: dict[str, object] = {
        "step_name": name,
        "step_type": "orchestrator",
        "node": ORCHESTRATOR,
        "operation": operation,
        "depends_on": list(depends_on),
        "timeout_ms": 2000,
        **extra,
    }
    return as_dict(json.loads(json.dumps(step)))


def system_data(steps: list[Body], **coordination: object) -> dict[str, object]:
    return contract_data(
        "orchestrator",
        HANDLERS,
        name=ORCHESTRATOR,
        event_bus={"subscribe_topics": [cmd("review")], "publish_topics": [TERMINAL]},
        terminal_event=TERMINAL,
        mixins=["MixinEventBus"],
        workflow_coordination={
            "execution_mode": "parallel",
            "steps": steps,
            **coordination,
        },
    )


def orchestrator(
    tmp_path: Path,
    broker: FakeBroker | None,
    steps: list[Body],
    *,
    settings: dict[str, object] | None = None,
    **coordination: object,
) -> NodeOrchestrator:
    """The orchestrator on ``broker`` (no Kafka at all without one)."""
    path = write_contract(tmp_path, system_data(steps, **coordination))
    values: dict[str, object] = {
        "replica": "orch-0",
        "namespace": "ns",
        "kafka_servers": "fake:9092" if broker else None,
        **(settings or {}),
    }
    node_class = node_on(NodeOrchestrator, path)
    return node_class(ModelNodeSettings.model_validate(values), kafka_clients=broker)


def sibling(
    broker: FakeBroker, name: str, behaviour: Behaviour | None = None
) -> FakeSibling:
    return FakeSibling(broker, f"node_{name}", cmd(name), evt(name), behaviour)


def in_turn(*answers: Answer) -> Behaviour:
    """Answer each command with the next answer; the last one repeats."""
    queue = list(answers)

    def behave(_command: Command) -> Answer:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return behave


async def connected(node: NodeOrchestrator) -> None:
    """Start ``node`` and wait until its bus and reply consumer (if any) run."""
    await node.start()
    for _ in range(500 if node.bus.servers else 0):
        replies = node.replies
        if node.bus.state is EnumBusState.CONNECTED and (
            replies is None or replies.started
        ):
            return
        await asyncio.sleep(0.01)
    if node.bus.servers:
        raise AssertionError(f"the bus did not connect: {node.bus.reason}")


async def request(
    node: NodeOrchestrator, cid: UUID, payload: Body | None = None
) -> tuple[int, Body]:
    return await node.process_json(
        {"operation": "run_review", "correlation_id": str(cid), "payload": payload}
        if payload is not None
        else {"operation": "run_review", "correlation_id": str(cid)}
    )


def serve(
    node: NodeOrchestrator, cid: UUID, payload: Body | None = None
) -> tuple[int, Body]:
    """Start ``node``, process one request, stop."""

    async def go() -> tuple[int, Body]:
        await connected(node)
        try:
            return await request(node, cid, payload)
        finally:
            await node.stop()

    return run(go())


def steps_of(body: Body) -> dict[str, Body]:
    result = as_dict(body["result"])
    return {str(s["step"]): s for s in map(as_dict, as_list(result["steps"]))}


def step_cid(cid: UUID, name: str) -> str:
    return str(uuid5(cid, name))


def test_independent_steps_overlap_and_a_join_waits_for_both(tmp_path: Path) -> None:
    broker = FakeBroker()
    a = sibling(broker, "a", lambda c: Answer({"from": "a"}, delay_s=0.3))
    b = sibling(broker, "b", lambda c: Answer({"from": "b"}, delay_s=0.3))
    c = sibling(broker, "c")
    steps = [
        remote("a"),
        remote("b"),
        remote("c", depends_on=["a", "b"]),
        local("case", "open_review_case", depends_on=["c"]),
    ]
    node = orchestrator(tmp_path, broker, steps)
    cid = uuid4()
    status, body = serve(node, cid, {"order": 7})

    assert status == 200, body
    (command_a,), (command_b,), (command_c,) = a.commands, b.commands, c.commands
    (_, a_replied), (_, b_replied) = a.replied[0], b.replied[0]
    assert command_a.at < b_replied and command_b.at < a_replied, "not concurrent"
    assert command_c.at >= max(a_replied, b_replied)
    assert command_a.operation == "do_a"
    assert command_a.correlation_id == step_cid(cid, "a")
    assert command_a.payload == {"order": 7, "upstream": {}}
    assert command_c.payload == {
        "order": 7,
        "upstream": {"a": {"from": "a"}, "b": {"from": "b"}},
    }
    result = as_dict(body["result"])
    assert [
        (s["step"], s["node"], s["operation"], s["status"], s["attempts"])
        for s in map(as_dict, as_list(result["steps"]))
    ] == [
        ("a", "node_a", "do_a", "completed", 1),
        ("b", "node_b", "do_b", "completed", 1),
        ("c", "node_c", "do_c", "completed", 1),
        ("case", ORCHESTRATOR, "open_review_case", "completed", 1),
    ]
    assert result["completed_steps"] == 4 and result["total_steps"] == 4
    assert result["compensations"] == [] and result["replayed"] is False
    assert as_dict(result["outputs"])["c"] == {"by": "node_c"}
    case = as_dict(steps_of(body)["case"]["output"])
    assert case["step"] == "case"
    assert sorted(map(str, as_list(case["previous_steps"]))) == ["a", "b", "c"]
    (event,) = broker.on(TERMINAL)
    assert as_dict(event["payload"])["success"] is True
    assert event["correlation_id"] == str(cid)


def test_sequential_mode_runs_one_step_at_a_time(tmp_path: Path) -> None:
    broker = FakeBroker()
    a = sibling(broker, "a", lambda c: Answer(delay_s=0.1))
    b = sibling(broker, "b", lambda c: Answer(delay_s=0.1))
    node = orchestrator(
        tmp_path, broker, [remote("a"), remote("b")], execution_mode="sequential"
    )
    status, body = serve(node, uuid4())
    assert status == 200, body
    assert b.commands[0].at >= a.replied[0][1]


def test_the_bus_carries_the_siblings_topics_and_a_private_reply_consumer(
    tmp_path: Path,
) -> None:
    broker = FakeBroker()
    sibling(broker, "a")
    node = orchestrator(tmp_path, broker, [remote("a")])
    serve(node, uuid4())
    assert broker.created[cmd("a")] == node.settings.command_partitions
    assert broker.created[evt("a")] == 1
    assert broker.created[TERMINAL] == 1
    (config,) = [
        c for c in broker.consumer_configs if "-replies-" in str(c["group.id"])
    ]
    assert str(config["group.id"]).startswith(f"{ORCHESTRATOR}-replies-{node.node_id}")
    assert config["auto.offset.reset"] == "latest"
    assert config["enable.auto.commit"] is False


def test_a_step_is_retried_under_the_same_correlation_id(tmp_path: Path) -> None:
    broker = FakeBroker()
    silent_once = sibling(broker, "x", in_turn(Answer(silent=True), Answer({"x": 1})))
    busy_once = sibling(broker, "y", in_turn(Answer(error="busy"), Answer({"y": 1})))
    steps = [
        remote("x", timeout_ms=200, retry_count=1),
        remote("y", timeout_ms=2000, retry_count=1),
    ]
    node = orchestrator(tmp_path, broker, steps)
    cid = uuid4()
    status, body = serve(node, cid)

    assert status == 200, body
    for name, fake in (("x", silent_once), ("y", busy_once)):
        step = steps_of(body)[name]
        assert step["status"] == "completed" and step["attempts"] == 2, step
        assert step["error"] is None
        ids = {command.correlation_id for command in fake.commands}
        assert len(fake.commands) == 2 and ids == {step_cid(cid, name)}


def test_a_timed_out_step_compensates_the_completed_ones_newest_first(
    tmp_path: Path,
) -> None:
    broker = FakeBroker()
    charge = sibling(
        broker,
        "charge",
        lambda c: Answer(
            {"charged": 10} if c.operation == "do_charge" else {"refunded": True}
        ),
    )
    audit = sibling(broker, "audit", lambda c: Answer(delay_s=5.0))
    ship = sibling(broker, "ship", lambda c: Answer(silent=True))
    notify = sibling(broker, "notify")
    steps = [
        remote("charge", compensation_operation="refund_payment"),
        local(
            "reserve",
            "open_review_case",
            depends_on=["charge"],
            compensation_operation="close_review_case",
        ),
        remote("audit"),
        remote("ship", depends_on=["reserve"], timeout_ms=200),
        remote("notify", depends_on=["ship"]),
    ]
    node = orchestrator(tmp_path, broker, steps)
    cid = uuid4()
    began = time.monotonic()
    status, body = serve(node, cid, {"order": 9})

    assert time.monotonic() - began < 3.0, "the slow step was not cancelled"
    assert status == 500 and body["success"] is False, body
    assert "workflow step 'ship' timed out on node node_ship" in str(body["error"])
    by_name = steps_of(body)
    assert {name: step["status"] for name, step in by_name.items()} == {
        "charge": "completed",
        "reserve": "completed",
        "audit": "cancelled",
        "ship": "timed_out",
        "notify": "skipped",
    }
    assert "node_ship" in str(by_name["ship"]["error"])
    assert evt("ship") in str(by_name["ship"]["error"])
    assert as_dict(body["result"])["compensations"] == [
        {
            "step": "reserve",
            "node": ORCHESTRATOR,
            "operation": "close_review_case",
            "status": "completed",
            "error": None,
        },
        {
            "step": "charge",
            "node": "node_charge",
            "operation": "refund_payment",
            "status": "completed",
            "error": None,
        },
    ]
    assert kind_handlers.CALLS == ["close_review_case:reserve"]
    assert charge.operations() == ["do_charge", "refund_payment"]
    refund = charge.commands[1]
    assert refund.correlation_id == step_cid(cid, "charge/compensate")
    assert refund.payload == {
        "order": 9,
        "compensating": "charge",
        "step_result": {"charged": 10},
    }
    assert audit.operations() == ["do_audit"] and notify.commands == []
    assert len(ship.commands) == 1
    (event,) = broker.on(TERMINAL)
    assert as_dict(event["payload"])["success"] is False
    workflows = as_dict(node.get_health_status()["workflows"])
    assert workflows == {"completed": 0, "failed": 0, "timed_out": 1}
    metrics = node.render_metrics()
    assert 'step="ship",node="node_ship",status="timed_out"} 1' in metrics, metrics
    assert 'step="audit",node="node_audit",status="cancelled"} 1' in metrics


def test_error_action_stop_compensates_nothing(tmp_path: Path) -> None:
    broker = FakeBroker()
    charge = sibling(broker, "charge")
    decline = sibling(broker, "decline", lambda c: Answer(error="card declined"))
    steps = [
        remote("charge", compensation_operation="refund_payment"),
        remote("decline", depends_on=["charge"], retry_count=1, error_action="stop"),
    ]
    node = orchestrator(tmp_path, broker, steps)
    status, body = serve(node, uuid4())

    assert status == 500, body
    step = steps_of(body)["decline"]
    assert step["status"] == "failed" and step["attempts"] == 2
    assert step["error"] == "node node_decline answered: card declined"
    assert as_dict(body["result"])["compensations"] == []
    assert charge.operations() == ["do_charge"] and len(decline.commands) == 2
    assert as_dict(node.get_health_status()["workflows"])["failed"] == 1


def test_local_steps_run_and_compensate_without_a_bus(tmp_path: Path) -> None:
    steps = [
        local("open", "open_review_case", compensation_operation="close_review_case"),
        local("boom", "explode", depends_on=["open"]),
    ]
    node = orchestrator(tmp_path, None, steps)
    status, body = serve(node, uuid4())
    assert status == 500 and "step 'boom' failed" in str(body["error"]), body
    assert steps_of(body)["boom"]["error"] == "RuntimeError: step exploded"
    assert kind_handlers.CALLS == ["close_review_case:open"]
    assert "workflow_replies" not in node.get_health_status()


@pytest.mark.parametrize(
    ("settings", "state"),
    [({"skip_event_bus": True}, "disabled"), ({}, "degraded")],
)
def test_without_a_bus_a_remote_step_fails_at_once(
    tmp_path: Path, settings: dict[str, object], state: str
) -> None:
    steps = [remote("a", timeout_ms=5000, retry_count=2)]
    node = orchestrator(tmp_path, None, steps, settings=settings)

    async def go() -> tuple[int, Body]:
        await node.start()
        try:
            return await request(node, uuid4())
        finally:
            await node.stop()

    began = time.monotonic()
    status, body = run(go())
    assert time.monotonic() - began < 1.0
    assert status == 500, body
    step = steps_of(body)["a"]
    assert step["status"] == "failed" and step["attempts"] == 1
    assert f"the event bus is {state}" in str(step["error"]), step
    assert cmd("a") in str(step["error"]) and "node_a" in str(step["error"])


def test_replays_get_the_first_result_even_while_it_runs(tmp_path: Path) -> None:
    broker = FakeBroker()
    a = sibling(broker, "a", lambda c: Answer({"n": len(a.commands)}, delay_s=0.2))
    node = orchestrator(tmp_path, broker, [remote("a")])
    first_cid, second_cid = uuid4(), uuid4()

    async def go() -> list[tuple[int, Body]]:
        await connected(node)
        try:
            answers = [await request(node, first_cid), await request(node, first_cid)]
            answers += await asyncio.gather(
                request(node, second_cid), request(node, second_cid)
            )
            return answers
        finally:
            await node.stop()

    answers = run(go())
    assert [status for status, _ in answers] == [200] * 4, answers
    results = [as_dict(body["result"]) for _, body in answers]
    assert [r["replayed"] for r in results] == [False, True, False, True]
    assert results[0]["outputs"] == results[1]["outputs"] == {"a": {"n": 1}}
    assert results[2]["outputs"] == results[3]["outputs"] == {"a": {"n": 2}}
    assert [c.correlation_id for c in a.commands] == [
        step_cid(first_cid, "a"),
        step_cid(second_cid, "a"),
    ]


def test_late_and_unknown_replies_are_ignored_and_counted(tmp_path: Path) -> None:
    broker = FakeBroker()
    sibling(broker, "slow", lambda c: Answer(delay_s=0.4))
    node = orchestrator(
        tmp_path, broker, [remote("slow", timeout_ms=150, error_action="stop")]
    )
    stranger = build_envelope(
        payload={"success": True, "result": {}},
        event_type=evt("slow"),
        source_tool="node_slow",
        correlation_id=uuid4(),
    )

    async def go() -> tuple[int, Body, dict[str, JsonValue]]:
        await connected(node)
        try:
            status, body = await request(node, uuid4())
            broker.publish(evt("slow"), "k", stranger)
            broker.append(evt("slow"), "k", b"not json")
            replies = node.replies
            assert replies is not None
            for _ in range(200):
                if replies.late and replies.ignored == 2:
                    break
                await asyncio.sleep(0.01)
            return status, body, node.get_health_status()
        finally:
            await node.stop()

    status, body, health = run(go())
    assert status == 500 and steps_of(body)["slow"]["status"] == "timed_out"
    replies = as_dict(health["workflow_replies"])
    assert replies["late"] == 1 and replies["ignored"] == 2, replies
    assert replies["matched"] == 0 and replies["pending"] == 0
    assert as_list(replies["topics"]) == [evt("slow")]
    metrics = node.render_metrics()
    assert 'result="late"} 1' in metrics and 'result="ignored"} 2' in metrics


def test_a_command_on_the_bus_runs_the_workflow_and_reports_on_the_terminal_topic(
    tmp_path: Path,
) -> None:
    broker = FakeBroker()
    sibling(broker, "a")
    node = orchestrator(tmp_path, broker, [remote("a")])
    cid = str(uuid4())
    command: Body = {"correlation_id": cid, "payload": {"operation": "run_review"}}

    async def go() -> list[dict[str, JsonValue]]:
        await connected(node)
        broker.publish(cmd("review"), cid, command)
        try:
            for _ in range(300):
                if broker.on(TERMINAL):
                    break
                await asyncio.sleep(0.01)
            return broker.on(TERMINAL)
        finally:
            await node.stop()

    (event,) = run(go())
    payload = as_dict(event["payload"])
    assert event["correlation_id"] == cid and payload["success"] is True, payload
    assert as_dict(payload["result"])["outputs"] == {"a": {"by": "node_a"}}


def test_a_generated_node_answers_as_a_sibling(tmp_path: Path) -> None:
    """The fixture effect node (the real command path) runs a remote step."""
    broker = FakeBroker()
    step = {
        "step_name": "store",
        "step_type": "EFFECT_GENERIC",
        "node": "fixture_node",
        "operation": "insert_record",
        "command_topic": "onex.cmd.test.fixture-writer.v1",
        "reply_topic": "onex.evt.test.fixture-writer-completed.v1",
        "timeout_ms": 3000,
    }
    node = orchestrator(tmp_path, broker, [as_dict(json.loads(json.dumps(step)))])
    effect = NodeFixtureWriterEffect(
        ModelNodeSettings(kafka_servers="fake:9092", replica="pod-0", namespace="ns"),
        kafka_clients=broker,
    )
    cid = uuid4()

    async def go() -> list[tuple[int, Body]]:
        await effect.start()
        await connected(node)
        try:
            payload: Body = {"id": "r1", "total": 5}
            return [await request(node, cid, payload), await request(node, cid)]
        finally:
            await node.stop()
            await effect.stop()

    (status, body), (_, again) = run(go())
    assert status == 200, body
    output = as_dict(as_dict(as_dict(body["result"])["outputs"])["store"])
    assert output["key"] == "r1" and output["replayed"] is False, output
    assert as_dict(again["result"])["replayed"] is True
    assert effect.records.get("r1") == {"id": "r1", "total": 5, "upstream": {}}
    commands = broker.on("onex.cmd.test.fixture-writer.v1")
    assert [c["correlation_id"] for c in commands] == [step_cid(cid, "store")]
    loaded = load_contract(tmp_path / "contract.yaml").workflow_coordination
    assert loaded is not None and loaded.steps[0].step_type is EnumNodeKind.EFFECT


def test_a_workflow_runs_in_one_trace_across_nodes(tmp_path: Path) -> None:
    """A command's trace goes on to the sibling's command, reply and result."""
    broker = FakeBroker()
    commands, replies = (
        "onex.cmd.test.fixture-writer.v1",
        "onex.evt.test.fixture-writer-completed.v1",
    )
    step = {
        "step_name": "store",
        "step_type": "EFFECT_GENERIC",
        "node": "fixture_node",
        "operation": "insert_record",
        "command_topic": commands,
        "reply_topic": replies,
        "timeout_ms": 3000,
    }
    node = orchestrator(tmp_path, broker, [as_dict(json.loads(json.dumps(step)))])
    effect = NodeFixtureWriterEffect(
        ModelNodeSettings(
            kafka_servers="fake:9092", replica="pod-0", namespace="ns", traceparent=None
        ),
        kafka_clients=broker,
    )
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    traceparent = f"00-{trace_id}-b7ad6b7169203331-01"
    cid = str(uuid4())
    command: Body = {"correlation_id": cid, "payload": {"operation": "run_review"}}

    async def go() -> None:
        await effect.start()
        await connected(node)
        broker.publish(
            cmd("review"), cid, command, [("traceparent", traceparent.encode())]
        )
        try:
            for _ in range(300):
                if broker.on(TERMINAL):
                    return
                await asyncio.sleep(0.01)
        finally:
            await node.stop()
            await effect.stop()

    run(go())
    (result,) = broker.traceparents(TERMINAL)
    (sent,) = broker.traceparents(commands)
    (reply,) = broker.traceparents(replies)
    contexts = [parse_traceparent(value) for value in (result, sent, reply)]
    assert [c.trace_id if c else None for c in contexts] == [trace_id] * 3, contexts
    spans = [c.span_id for c in contexts if c]
    # The orchestrator sent the command from the span it processes the request
    # in; the sibling answered from a span of its own.
    assert spans[0] == spans[1] != spans[2]
    assert "b7ad6b7169203331" not in spans


def bad_contract(tmp_path: Path, steps: list[Body]) -> Callable[[], object]:
    path = write_contract(tmp_path, system_data(steps))
    return lambda: load_contract(path)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [remote("a", depends_on=["b"]), remote("b", depends_on=["a"])],
            "cycle: a -> b -> a",
        ),
        ([remote("a", depends_on=["a"])], "cycle: a -> a"),
        ([remote("a", depends_on=["nope"])], r"depends on unknown steps \['nope'\]"),
        ([remote("a"), remote("a")], r"not unique: \['a'\]"),
        ([remote("a", reply_topic=None)], "needs both command_topic and reply_topic"),
        ([remote("a", command_topic=None)], "needs both command_topic and reply_topic"),
        ([local("a", "nope")], "local step 'a' runs 'nope'"),
        (
            [local("a", "open_review_case", compensation_operation="nope")],
            "local step 'a' runs 'nope'",
        ),
        ([remote("a", error_action="ignore")], "error_action"),
    ],
)
def test_inconsistent_workflows_are_contract_errors(
    tmp_path: Path, steps: list[Body], message: str
) -> None:
    with pytest.raises(ContractError, match=message):
        bad_contract(tmp_path, steps)()


def test_without_workflow_coordination_nothing_changes() -> None:
    assert load_contract(FIXTURE_CONTRACT).workflow_coordination is None
