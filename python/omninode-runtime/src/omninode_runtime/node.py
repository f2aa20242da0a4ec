"""Node base classes: contract-driven dispatch, lifecycle, health and metrics.

A generated node is a declarative subclass of one of ``NodeEffect``,
``NodeCompute``, ``NodeReducer`` or ``NodeOrchestrator`` naming its input and
output models; everything else comes from the ``contract.yaml`` next to the
module that defines it.  Each kind adds only what makes it that kind: effects
journal side effects, computes cache pure results, reducers fold into state,
orchestrators run a workflow of steps.
"""

import asyncio
import importlib
import inspect
import json
import logging
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import ClassVar, TypeVar, cast

from pydantic import JsonValue, ValidationError

import omninode_runtime

from ._json import json_size
from .bus import EnumBusState, EventBus, KafkaClients, build_envelope, parse_command
from .context import HandlerContext, Outbox, RecordStore, ReducerState, SequenceCounter
from .contract import (
    ContractError,
    EnumNodeKind,
    ModelContract,
    ModelHandlerRef,
    ModelWorkflowStep,
    check_runtime_version,
    load_contract,
)
from .errors import HandlerError, InvalidInputError
from .introspection import (
    EnumIntrospectionReason,
    advertised_base_url,
    introspection_payload,
    node_instance_id,
)
from .logs import correlation_scope, log_event, set_identity
from .metrics import RequestMetrics, metric_family
from .mixins import (
    MixinCaching,
    MixinHealthCheck,
    RuntimeMixin,
    build_mixins,
    call_through,
)
from .models import ModelNodeInput, ModelNodeOutput, ModelNodeSettings
from .replies import ReplyRouter
from .tracecontext import TraceContext, child_of, parse_traceparent, trace_scope
from .workflow import WorkflowEngine, WorkflowFailedError

HandlerFunction = Callable[
    [ModelNodeInput, HandlerContext], Awaitable[dict[str, JsonValue]]
]
M = TypeVar("M", bound=RuntimeMixin)
BUS_STATES = tuple(EnumBusState)


def operation_name(operation: str) -> str:
    """The plain string of an operation (a StrEnum member's value)."""
    return operation.value if isinstance(operation, Enum) else str(operation)


def resolve_handler(operation: str, ref: ModelHandlerRef) -> HandlerFunction:
    """Import the handler ``ref`` names; ContractError unless it is ``async def``."""
    where = f"{ref.module}.{ref.function}"
    try:
        module = importlib.import_module(ref.module)
    except ImportError as exc:
        raise ContractError(
            f"operation {operation!r}: "
            f"cannot import handler module {ref.module!r}: {exc}"
        ) from exc
    function: object = getattr(module, ref.function, None)
    if function is None:
        raise ContractError(
            f"operation {operation!r}: {ref.module!r} has no {ref.function!r}"
        )
    if not inspect.iscoroutinefunction(function):
        raise ContractError(
            f"operation {operation!r}: "
            f"handler {where} must be an async function (async def)"
        )
    return cast(HandlerFunction, function)


def validation_details(exc: ValidationError) -> list[JsonValue]:
    """Pydantic errors as ``[{"location": "payload.x", "message": ...}]``."""
    return [
        {"location": ".".join(map(str, error["loc"])), "message": error["msg"]}
        for error in exc.errors()
    ]


class NodeRuntime:
    """Everything a node does, driven by its contract; use a kind's subclass.

    ``process`` never raises for a failed operation: the output then has
    ``success=False`` and ``error`` says why (``result`` keeps a partial result).
    """

    input_model: ClassVar[type[ModelNodeInput]] = ModelNodeInput
    output_model: ClassVar[type[ModelNodeOutput]] = ModelNodeOutput
    kind: ClassVar[EnumNodeKind | None] = None
    budget_key: ClassVar[str | None] = None

    def __init__(
        self,
        settings: ModelNodeSettings | None = None,
        *,
        kafka_clients: KafkaClients | None = None,
    ) -> None:
        """Load and check the contract, import the handlers; nothing runs yet."""
        if self.kind is None:
            raise TypeError(
                "subclass NodeEffect, NodeCompute, NodeReducer or NodeOrchestrator"
            )
        self.settings = settings or ModelNodeSettings()
        self.contract: ModelContract = load_contract(self.contract_path())
        check_runtime_version(self.contract, omninode_runtime.RUNTIME_VERSION)
        self._check_contract_matches_class()
        self.node_name = self.contract.name
        self.node_id = self.settings.node_id or node_instance_id(
            self.settings.namespace, self.node_name, self.settings.replica
        )
        self.port = self.settings.port
        self.logger = logging.getLogger(f"omninode_runtime.node.{self.node_name}")
        self.mixins, unknown = build_mixins(self.contract.mixins, self.settings)
        for name in unknown:
            log_event(self.logger, logging.WARNING, "unknown_mixin_ignored", mixin=name)
        self.routes: dict[str, HandlerFunction] = {
            route.operation: resolve_handler(route.operation, route.handler)
            for route in self.contract.handler_routing.handlers
        }
        health = self.mixin(MixinHealthCheck)
        if health is not None:
            health.register(
                "handlers", lambda: set(self.routes) == set(self.contract.operations)
            )
        self.records = RecordStore(self.settings.max_records)
        self.outbox = Outbox(self.settings.max_outbox)
        self.state = ReducerState(
            self.performance("aggregation_window_ms", 60_000.0),
            self.settings.idempotency_window,
        )
        self.sequence = SequenceCounter()
        self.request_metrics = RequestMetrics(self.contract.operations)
        self.budget_exceeded = 0
        self.bus = EventBus(
            servers=self.settings.kafka_servers,
            client_id=f"{self.node_name}-{self.settings.replica}",
            group_id=self.settings.consumer_group or self.node_name,
            timeout_s=self.settings.kafka_timeout_s,
            clients=kafka_clients,
        )
        self._init_bus_state()
        self._bus_task: asyncio.Task[None] | None = None
        self.startup_trace: TraceContext | None = None
        self._phase = "created"
        self._created_at = time.monotonic()

    @classmethod
    def contract_path(cls) -> Path:
        """``contract.yaml`` next to the module that defines the node class."""
        module = sys.modules.get(cls.__module__)
        filename = getattr(module, "__file__", None)
        if not isinstance(filename, str):
            raise ContractError(
                f"cannot locate contract.yaml: {cls.__module__} has no file"
            )
        return Path(filename).resolve().parent / "contract.yaml"

    def _check_contract_matches_class(self) -> None:
        contract, name = self.contract, type(self).__name__
        if contract.kind != self.kind:
            raise ContractError(
                f"{name} is a {self.kind} node "
                f"but contract.yaml declares {contract.node_type}"
            )
        for declared, model in (
            (contract.input_model.name, self.input_model),
            (contract.output_model.name, self.output_model),
        ):
            if (
                model not in (ModelNodeInput, ModelNodeOutput)
                and declared != model.__name__
            ):
                raise ContractError(
                    f"contract.yaml names {declared}; {name} uses {model.__name__}"
                )
        annotation = self.input_model.model_fields["operation"].annotation
        if isinstance(annotation, type) and issubclass(annotation, Enum):
            enum_values = sorted(str(member.value) for member in annotation)
            if enum_values != sorted(contract.operations):
                raise ContractError(
                    f"{annotation.__name__} has operations {enum_values} but "
                    f"handler_routing routes {sorted(contract.operations)}"
                )

    def performance(self, key: str, default: float) -> float:
        """A performance value: settings, else the contract, else ``default``."""
        return self.settings.performance.get(
            key, self.contract.performance.get(key, default)
        )

    def mixin(self, kind: type[M]) -> M | None:
        """The contract's instance of mixin class ``kind``, or None if not listed."""
        found = self.mixins.get(kind.name)
        return found if isinstance(found, kind) else None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Serve requests; join the event bus in the background (see health).

        Joining (up to the start-up announcement) runs in ``startup_trace``.
        """
        if self._phase in ("starting", "running"):
            return
        self._phase = "starting"
        set_identity(node_name=self.node_name, node_id=str(self.node_id))
        self.startup_trace = self._startup_trace()
        with trace_scope(self.startup_trace):
            if self._bus_wanted() and self.bus.state is not EnumBusState.DISABLED:
                loop = asyncio.get_running_loop()
                self._bus_task = loop.create_task(self._run_bus())
        self._phase = "running"

    def _startup_trace(self) -> TraceContext | None:
        """A child of ``settings.traceparent`` (the generation's trace), if valid."""
        traceparent = self.settings.traceparent
        if not traceparent:
            return None
        parent = parse_traceparent(traceparent)
        if parent is None:
            log_event(
                self.logger,
                logging.WARNING,
                "startup_traceparent_invalid",
                traceparent=traceparent[:100],
            )
            return None
        return child_of(parent)

    async def stop(self) -> None:
        """Stop: leave the bus (shutdown introspection, bounded flush)."""
        if self._phase in ("stopping", "stopped"):
            return
        if self._phase == "created":
            self._phase = "stopped"
            return
        self._phase = "stopping"
        task, self._bus_task = self._bus_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.contract.introspection.member:
            self._announce(EnumIntrospectionReason.SHUTDOWN)
        await self.bus.close(self.settings.shutdown_timeout_s)
        self._phase = "stopped"

    def is_ready(self) -> bool:
        """True while started and no health check objects."""
        return not self.not_ready_reasons()

    def not_ready_reasons(self) -> list[str]:
        """Why the node should not get traffic now (empty when ready)."""
        reasons = [] if self._phase == "running" else [f"node is {self._phase}"]
        for mixin in self.mixins.values():
            reasons += mixin.not_ready_reasons()
        return reasons

    def uptime_seconds(self) -> float:
        """Seconds since the node object was created."""
        return time.monotonic() - self._created_at

    # -- processing ----------------------------------------------------------

    async def process(self, request: ModelNodeInput) -> ModelNodeOutput:
        """Validate ``request``, run its operation, report the outcome."""
        output, _ = await self._process(request)
        return output

    async def process_json(self, data: object) -> tuple[int, dict[str, JsonValue]]:
        """Process a decoded JSON request: ``(HTTP status, response body)``.

        422 for input the model or a mixin refuses, 500 for a failed operation.
        """
        return await self._process_json(data, from_bus=False)

    async def _process_json(
        self, data: object, *, from_bus: bool
    ) -> tuple[int, dict[str, JsonValue]]:
        try:
            request = self.input_model.model_validate(data)
        except ValidationError as exc:
            operation = data.get("operation") if isinstance(data, dict) else None
            self._record(str(operation), "invalid", 0.0)
            body: dict[str, JsonValue] = {
                "success": False,
                "error": "invalid input",
                "details": validation_details(exc),
            }
            return 422, body
        output, outcome = await self._process(request, from_bus=from_bus)
        status = 200 if output.success else 422 if outcome == "invalid" else 500
        return status, output.model_dump(mode="json")

    async def _process(
        self, request: ModelNodeInput, *, from_bus: bool = False
    ) -> tuple[ModelNodeOutput, str]:
        if not isinstance(request, self.input_model):
            raise TypeError(
                f"expected {self.input_model.__name__}, got {type(request).__name__}"
            )
        started = time.perf_counter()
        operation = operation_name(request.operation)
        result: dict[str, JsonValue] = {}
        error: str | None = None
        outcome = "success"
        with correlation_scope(request.correlation_id):
            try:
                self.validate_input(request)
                result = await self._dispatch(request)
            except InvalidInputError as exc:
                outcome, error = "invalid", f"invalid input: {exc}"
            except HandlerError as exc:
                outcome, error, result = "error", str(exc), exc.result
            except Exception as exc:
                log_event(
                    self.logger, logging.ERROR, "operation_failed", operation=operation
                )
                self.logger.debug("traceback", exc_info=True)
                outcome, error = "error", f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - started
            try:
                output = self._output(request, result, error, elapsed)
            except ValidationError as exc:
                outcome = "error"
                output = self._output(
                    request, {}, f"handler returned invalid JSON: {exc}", elapsed
                )
            self._record(operation, outcome, elapsed)
        if not from_bus and "MixinEventBus" in self.mixins:
            self._publish_result(
                str(output.correlation_id), output.model_dump(mode="json")
            )
        return output, outcome

    def _output(
        self,
        request: ModelNodeInput,
        result: dict[str, JsonValue],
        error: str | None,
        elapsed_s: float,
    ) -> ModelNodeOutput:
        return self.output_model(
            success=error is None,
            operation=request.operation,
            correlation_id=request.correlation_id,
            result=result,
            error=error,
            processing_time_ms=elapsed_s * 1000.0,
        )

    def validate_input(self, request: ModelNodeInput) -> None:
        """Raise InvalidInputError unless the runtime and mixins accept ``request``."""
        operation = operation_name(request.operation)
        if operation not in self.routes:
            known = ", ".join(sorted(self.routes))
            raise InvalidInputError(
                f"unsupported operation {operation!r}; expected one of: {known}"
            )
        try:
            size = json_size(request.payload)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc
        if size > self.settings.max_payload_bytes:
            raise InvalidInputError(
                f"payload is {size} bytes; "
                f"the limit is {self.settings.max_payload_bytes}"
            )
        for mixin in self.mixins.values():
            mixin.check_input(request)

    async def _dispatch(self, request: ModelNodeInput) -> dict[str, JsonValue]:
        """Run the request's handler (kinds override this to add their semantics)."""
        return await self.run_handler(request, operation_name(request.operation))

    async def run_handler(
        self,
        request: ModelNodeInput,
        operation: str,
        *,
        step_outputs: dict[str, JsonValue] | None = None,
        step: str | None = None,
    ) -> dict[str, JsonValue]:
        """Call ``operation``'s handler through the resilience mixins.

        ``step_outputs`` marks a workflow step (named ``step``, else after the
        operation) and carries the outputs of the steps before it.
        """
        handler = self.routes[operation]
        context = HandlerContext(
            node_name=self.node_name,
            node_kind=self.contract.kind,
            contract=self.contract,
            operation=operation,
            correlation_id=request.correlation_id,
            records=self.records,
            outbox=self.outbox,
            state=self.state,
            sequence=self.sequence,
            logger=self.logger,
            workflow=self.contract.operations,
            step=(step or operation) if step_outputs is not None else None,
            step_outputs=dict(step_outputs or {}),
        )

        async def call() -> dict[str, JsonValue]:
            result: object = await handler(request, context)
            if not isinstance(result, dict):
                raise TypeError(
                    f"handler of {operation!r} returned "
                    f"{type(result).__name__}, not a dict"
                )
            return cast(dict[str, JsonValue], result)

        return await call_through(self.mixins, call)

    def _record(self, operation: str, outcome: str, seconds: float) -> None:
        self.request_metrics.record(operation, outcome, seconds)
        for mixin in self.mixins.values():
            mixin.observe(operation, outcome, seconds)
        if self.budget_key is not None:
            budget_ms = self.performance(self.budget_key, float("inf"))
            if seconds * 1000.0 > budget_ms:
                self.budget_exceeded += 1
                log_event(
                    self.logger,
                    logging.WARNING,
                    "budget_exceeded",
                    operation=operation,
                    elapsed_ms=round(seconds * 1000.0, 3),
                    budget_ms=budget_ms,
                )
        if "MixinLogging" not in self.mixins:
            level = logging.DEBUG if outcome == "success" else logging.WARNING
            log_event(
                self.logger,
                level,
                "request_processed",
                operation=operation,
                outcome=outcome,
            )

    # -- event bus -----------------------------------------------------------

    def _bus_wanted(self) -> bool:
        return bool(
            self.contract.introspection.member
            or self.contract.event_bus.subscribe_topics
            or "MixinEventBus" in self.mixins
        )

    def _init_bus_state(self) -> None:
        if self.settings.skip_event_bus:
            self.bus.set_state(
                EnumBusState.DISABLED, "event bus disabled (--skip-event-bus)"
            )
        elif not self._bus_wanted():
            self.bus.set_state(
                EnumBusState.DISABLED,
                "the contract neither joins introspection nor subscribes",
            )
        elif self.bus.servers is None:
            self.bus.set_state(
                EnumBusState.DEGRADED,
                "no Kafka bootstrap servers configured "
                "(--kafka-servers or KAFKA_BOOTSTRAP_SERVERS)",
            )

    def _bus_topics(self) -> dict[str, int]:
        """Topics the node uses, with the partitions each gets if it creates it.

        The command topic gets several, so that replicas in the node's consumer
        group share the commands; the others need no more than one.
        """
        topics: dict[str, int] = {}
        if self.contract.introspection.member:
            topics[self.contract.introspection.topic] = 1
        for topic in self.contract.event_bus.subscribe_topics[:1]:
            topics[topic] = self.settings.command_partitions
        if self.contract.terminal_event:
            topics.setdefault(self.contract.terminal_event, 1)
        return topics

    async def _run_bus(self) -> None:
        """Connect (retrying with backoff), announce, consume, send heartbeats."""
        try:
            backoff_s = 1.0
            while not await self.bus.connect(self._bus_topics()):
                if self.bus.servers is None or "not installed" in self.bus.reason:
                    return
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2.0, 30.0)
            self._on_bus_connected()
            introspection = self.contract.introspection
            if introspection.member:
                await self.bus.publish_and_wait(
                    introspection.topic, str(self.node_id), self.introspection_event()
                )
            subscribe = self.contract.event_bus.subscribe_topics
            if subscribe:
                self.bus.start_consumer(subscribe[0], self._on_command)
            with trace_scope(None):  # heartbeats are no part of the start-up
                while introspection.member:
                    await asyncio.sleep(introspection.heartbeat_seconds)
                    self._announce(EnumIntrospectionReason.HEARTBEAT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.logger.debug("event bus failure", exc_info=True)
            self.bus.set_state(EnumBusState.DEGRADED, f"event bus failed: {exc}")

    def _on_bus_connected(self) -> None:
        """Hook: the broker answered (kinds start their own consumers here)."""

    def introspection_event(
        self, reason: EnumIntrospectionReason = EnumIntrospectionReason.STARTUP
    ) -> dict[str, JsonValue]:
        """The introspection envelope announcing this node for ``reason``."""
        payload = introspection_payload(
            node_id=self.node_id,
            kind=self.contract.kind,
            node_name=self.node_name,
            node_version=self.contract.node_version,
            base_url=advertised_base_url(
                self.settings.advertised_host or self.settings.host, self.port
            ),
            reason=reason,
            contract=self.contract,
        )
        return build_envelope(
            payload=payload,
            event_type=self.contract.introspection.topic,
            source_tool=self.node_name,
            correlation_id=str(payload["correlation_id"]),
        )

    def _announce(self, reason: EnumIntrospectionReason) -> None:
        topic = self.contract.introspection.topic
        self.bus.publish(topic, str(self.node_id), self.introspection_event(reason))

    async def _on_command(self, raw: bytes) -> None:
        """Answer one command message with a result envelope on ``terminal_event``."""
        try:
            data, reply_id = parse_command(raw)
        except ValueError as exc:
            log_event(
                self.logger, logging.WARNING, "command_unreadable", error=str(exc)
            )
            return
        _, body = await self._process_json(data, from_bus=True)
        correlation = (
            reply_id or body.get("correlation_id") or data.get("correlation_id")
        )
        self._publish_result(str(correlation or uuid.uuid4()), body)

    def _publish_result(self, correlation_id: str, body: dict[str, JsonValue]) -> None:
        topic = self.contract.terminal_event
        if topic:
            envelope = build_envelope(
                payload=body,
                event_type=topic,
                source_tool=self.node_name,
                correlation_id=correlation_id,
            )
            self.bus.publish(topic, correlation_id, envelope)

    # -- health and metrics --------------------------------------------------

    def get_health_status(self) -> dict[str, JsonValue]:
        """Health body (JSON): readiness and why, identity, event bus, counters."""
        reasons = self.not_ready_reasons()
        if self._phase != "running":
            status = self._phase
        elif reasons:
            status = "unhealthy"
        elif self.bus.state is EnumBusState.DEGRADED:
            status = "degraded"
        else:
            status = "healthy"
        total, failed = self.request_metrics.totals()
        reason_list: list[JsonValue] = [*reasons]
        health: dict[str, JsonValue] = {
            "status": status,
            "ready": not reasons,
            "reasons": reason_list,
            "phase": self._phase,
            "node_id": str(self.node_id),
            "node_name": self.node_name,
            "node_type": self.contract.kind.value,
            "version": str(self.contract.node_version),
            "runtime_version": omninode_runtime.RUNTIME_VERSION,
            "uptime_seconds": round(self.uptime_seconds(), 3),
            "event_bus": self.bus.state.value,
            "event_bus_reason": self.bus.reason,
            "event_bus_stats": self.bus.stats(),
            "requests": {"total": total, "failed": failed},
            "mixins": {
                name: mixin.stats() for name, mixin in sorted(self.mixins.items())
            },
        }
        if self.budget_key is not None:
            health["budget_exceeded"] = self.budget_exceeded
        health.update(self._kind_health())
        return health

    def _kind_health(self) -> dict[str, JsonValue]:
        return {}

    def _kind_metrics(self, base: dict[str, str]) -> list[str]:
        return []

    def render_metrics(self) -> str:
        """The node's metrics in the Prometheus text format (version 0.0.4)."""
        base = {"node": self.node_name, "node_type": self.contract.kind.value}
        version = str(self.contract.node_version)
        lines = metric_family(
            "onex_node_info",
            "gauge",
            "Static information about the node.",
            [
                (
                    "",
                    {
                        **base,
                        "version": version,
                        "runtime_version": omninode_runtime.RUNTIME_VERSION,
                    },
                    1,
                )
            ],
        )
        lines += metric_family(
            "onex_node_up",
            "gauge",
            "1 while the node is started and ready.",
            [("", base, int(self.is_ready()))],
        )
        lines += metric_family(
            "onex_node_uptime_seconds",
            "gauge",
            "Seconds since the node was created.",
            [("", base, round(self.uptime_seconds(), 3))],
        )
        lines += self.request_metrics.render(base)
        if self.budget_key is not None:
            lines += metric_family(
                "onex_node_budget_exceeded_total",
                "counter",
                "Requests slower than the budget.",
                [("", base, self.budget_exceeded)],
            )
        lines += metric_family(
            "onex_node_event_bus_state",
            "gauge",
            "Event-bus state (1 for the current one).",
            [
                ("", {**base, "state": s.value}, int(s is self.bus.state))
                for s in BUS_STATES
            ],
        )
        lines += metric_family(
            "onex_node_event_bus_messages_total",
            "counter",
            "Events sent, by result.",
            [
                ("", {**base, "result": "delivered"}, self.bus.delivered),
                ("", {**base, "result": "failed"}, self.bus.failed),
            ],
        )
        lines += self._kind_metrics(base)
        for mixin in self.mixins.values():
            lines += mixin.render_metrics(base)
        return "\n".join(lines) + "\n"


class NodeEffect(NodeRuntime):
    """Side effects, once per correlation id: a replay gets the first result."""

    kind = EnumNodeKind.EFFECT
    budget_key = "max_response_time_ms"

    def __init__(
        self,
        settings: ModelNodeSettings | None = None,
        *,
        kafka_clients: KafkaClients | None = None,
    ) -> None:
        """Create the node with an empty journal of side effects."""
        super().__init__(settings, kafka_clients=kafka_clients)
        self._journal: OrderedDict[str, tuple[str, dict[str, JsonValue]]] = (
            OrderedDict()
        )

    async def _dispatch(self, request: ModelNodeInput) -> dict[str, JsonValue]:
        correlation_id = str(request.correlation_id)
        operation = operation_name(request.operation)
        previous = self._journal.get(correlation_id)
        if previous is not None:
            first_operation, first_result = previous
            if first_operation != operation:
                raise InvalidInputError(
                    f"correlation_id {correlation_id} was already used for "
                    f"operation {first_operation!r}"
                )
            self._journal.move_to_end(correlation_id)
            return {**first_result, "replayed": True}
        result = await self.run_handler(request, operation)
        self._journal[correlation_id] = (operation, result)
        while len(self._journal) > self.settings.idempotency_window:
            self._journal.popitem(last=False)
        return {**result, "replayed": False}

    def _kind_health(self) -> dict[str, JsonValue]:
        return {
            "store": {
                "records": len(self.records),
                "max_records": self.records.max_records,
                "outbox": len(self.outbox),
                "journal": len(self._journal),
                "sequence": self.sequence.value,
            }
        }


class NodeCompute(NodeRuntime):
    """Pure computations; results are cached when the contract lists MixinCaching."""

    kind = EnumNodeKind.COMPUTE
    budget_key = "single_operation_max_ms"

    async def _dispatch(self, request: ModelNodeInput) -> dict[str, JsonValue]:
        operation = operation_name(request.operation)
        cache = self.mixin(MixinCaching)
        if cache is None:
            return await self.run_handler(request, operation)
        key = cache.key(operation, request.payload)
        cached = cache.get(key)
        if cached is not None:
            return {**cached, "cached": True}
        result = await self.run_handler(request, operation)
        cache.put(key, result)
        return {**result, "cached": False}


class NodeReducer(NodeRuntime):
    """Folds requests into a bounded, windowed ``ReducerState``.

    In a system, a reducer also folds the results of the nodes its contract
    lists under ``aggregates``: each successful result on a source's terminal
    topic becomes a request for its first operation.  Replicas share the
    sources in one consumer group, so each result is folded once.
    """

    kind = EnumNodeKind.REDUCER

    def __init__(
        self,
        settings: ModelNodeSettings | None = None,
        *,
        kafka_clients: KafkaClients | None = None,
    ) -> None:
        """Create the node with nothing folded from its sources yet."""
        super().__init__(settings, kafka_clients=kafka_clients)
        self.source_events = {"folded": 0, "skipped": 0, "failed": 0}

    def _bus_wanted(self) -> bool:
        return super()._bus_wanted() or bool(self.contract.aggregates)

    def _bus_topics(self) -> dict[str, int]:
        """Also the sources' terminal topics, so they exist before a source runs."""
        topics = super()._bus_topics()
        for source in self.contract.aggregates:
            topics.setdefault(source.topic, 1)
        return topics

    def _on_bus_connected(self) -> None:
        super()._on_bus_connected()
        topics = sorted({source.topic for source in self.contract.aggregates})
        if topics:
            self.bus.start_consumer(
                topics, self._on_source_result, group_suffix="-aggregates"
            )

    async def _on_source_result(self, raw: bytes) -> None:
        """Fold one source's result under an id derived from its envelope, so a
        redelivered result is the same request (replays stay idempotent)."""
        try:
            envelope: object = json.loads(raw)
        except ValueError:
            envelope = None
        body = envelope.get("payload") if isinstance(envelope, dict) else None
        if not isinstance(envelope, dict) or not isinstance(body, dict):
            self.source_events["skipped"] += 1
            return
        if body.get("success") is not True:
            self.source_events["skipped"] += 1
            return
        key = str(envelope.get("envelope_id") or envelope.get("correlation_id"))
        request: dict[str, JsonValue] = {
            "operation": self.contract.operations[0],
            "correlation_id": str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"{self.node_name}/{key}")
            ),
            "payload": {"event": body, "source": envelope.get("source_tool")},
        }
        status, _ = await self._process_json(request, from_bus=True)
        self.source_events["folded" if status == 200 else "failed"] += 1

    def _kind_health(self) -> dict[str, JsonValue]:
        health: dict[str, JsonValue] = {
            "reductions": self.state.reductions,
            "window_events": self.state.window_events,
        }
        if self.contract.aggregates:
            health["source_events"] = dict(self.source_events)
        return health


@dataclass
class WorkflowStep:
    """Status of one step of a workflow run."""

    step: str
    status: str = "pending"
    duration_ms: float = 0.0
    error: str | None = None
    output: dict[str, JsonValue] = field(default_factory=dict)

    def to_json(self) -> dict[str, JsonValue]:
        """The step as JSON."""
        return {
            "step": self.step,
            "status": self.status,
            "duration_ms": round(self.duration_ms, 3),
            "error": self.error,
            "output": self.output,
        }


class NodeOrchestrator(NodeRuntime):
    """Runs a workflow; replays of a correlation id get the first result.

    With ``workflow_coordination`` steps in the contract, any request runs
    them all as a DAG, on sibling nodes over the event bus or on this node's
    own handlers (see ``workflow``).  Without, it runs one step per operation
    in contract order, from the request's operation to the end, each step
    seeing the outputs of the earlier ones.  The whole run is limited by
    ``timeout_ms`` (else ``performance.workflow_timeout_ms``).
    """

    kind = EnumNodeKind.ORCHESTRATOR

    def __init__(
        self,
        settings: ModelNodeSettings | None = None,
        *,
        kafka_clients: KafkaClients | None = None,
    ) -> None:
        """Create the node with no finished workflows."""
        super().__init__(settings, kafka_clients=kafka_clients)
        self._workflows: OrderedDict[str, dict[str, JsonValue]] = OrderedDict()
        self._running: dict[str, asyncio.Task[dict[str, JsonValue]]] = {}
        self.workflow_outcomes = {"completed": 0, "failed": 0, "timed_out": 0}
        self.replies = self._reply_router()
        self.engine = self._workflow_engine()

    def _coordinated_steps(self) -> list[ModelWorkflowStep]:
        coordination = self.contract.workflow_coordination
        return coordination.steps if coordination else []

    def _reply_router(self) -> ReplyRouter | None:
        """One reply consumer per instance, when a sibling runs some step."""
        coordination = self.contract.workflow_coordination
        if coordination is None or not coordination.remote_steps:
            return None
        # The node id is stable per replica; the token keeps two processes of
        # one replica (a local run next to a pod) from splitting the replies.
        group = f"{self.node_name}-replies-{self.node_id}-{uuid.uuid4().hex[:8]}"
        return ReplyRouter(
            coordination.topics("reply_topic"), group, self.settings.idempotency_window
        )

    def _workflow_engine(self) -> WorkflowEngine | None:
        coordination = self.contract.workflow_coordination
        if coordination is None or not coordination.steps:
            return None
        timeout_ms = coordination.timeout_ms or self.performance(
            "workflow_timeout_ms", 30_000.0
        )
        return WorkflowEngine(
            coordination,
            timeout_ms=timeout_ms,
            run_local=self.run_handler,
            bus=self.bus,
            replies=self.replies,
            source=self.node_name,
            logger=self.logger,
        )

    @property
    def workflow(self) -> tuple[str, ...]:
        """The steps, in order."""
        return self.contract.operations

    async def _dispatch(self, request: ModelNodeInput) -> dict[str, JsonValue]:
        correlation_id = str(request.correlation_id)
        previous = self._workflows.get(correlation_id)
        if previous is not None:
            return {**previous, "replayed": True}
        running = self._running.get(correlation_id)
        if running is not None:
            # The same request again while it runs: share its outcome.
            return {**await asyncio.shield(running), "replayed": True}
        if self.engine is None:
            result = await self.run_workflow(request)
        else:
            result = await self._run_coordinated(self.engine, request)
        self._workflows[correlation_id] = result
        while len(self._workflows) > self.settings.idempotency_window:
            self._workflows.popitem(last=False)
        return {**result, "replayed": False}

    async def _run_coordinated(
        self, engine: WorkflowEngine, request: ModelNodeInput
    ) -> dict[str, JsonValue]:
        """Run the DAG once per correlation id at a time; count the outcome."""
        correlation_id = str(request.correlation_id)
        task = asyncio.ensure_future(engine.run(request))
        self._running[correlation_id] = task
        try:
            result = await task
        except WorkflowFailedError as exc:
            self.workflow_outcomes[exc.outcome] += 1
            raise
        finally:
            self._running.pop(correlation_id, None)
        self.workflow_outcomes["completed"] += 1
        return result

    async def run_workflow(self, request: ModelNodeInput) -> dict[str, JsonValue]:
        """Run the steps from the request's operation on; HandlerError on failure."""
        plan = self.workflow[self.workflow.index(operation_name(request.operation)) :]
        records = [WorkflowStep(step) for step in plan]
        outputs: dict[str, JsonValue] = {}
        timeout_ms = self.performance("workflow_timeout_ms", 30_000.0)
        current = 0
        try:
            async with asyncio.timeout(timeout_ms / 1000.0):
                for current, step in enumerate(plan):
                    record = records[current]
                    record.status = "running"
                    began = time.perf_counter()
                    try:
                        record.output = await self.run_handler(
                            request, step, step_outputs=outputs
                        )
                    except Exception as exc:
                        record.status, record.error = (
                            "failed",
                            f"{type(exc).__name__}: {exc}",
                        )
                        self.workflow_outcomes["failed"] += 1
                        raise HandlerError(
                            f"workflow step {step!r} failed: {exc}",
                            self._result(records, outputs),
                        ) from exc
                    finally:
                        record.duration_ms = (time.perf_counter() - began) * 1000.0
                    record.status = "completed"
                    outputs[step] = record.output
        except TimeoutError as exc:
            records[current].status = "timed_out"
            self.workflow_outcomes["timed_out"] += 1
            raise HandlerError(
                f"workflow exceeded workflow_timeout_ms={timeout_ms:g}",
                self._result(records, outputs),
            ) from exc
        self.workflow_outcomes["completed"] += 1
        return self._result(records, outputs)

    @staticmethod
    def _result(
        records: list[WorkflowStep], outputs: dict[str, JsonValue]
    ) -> dict[str, JsonValue]:
        for record in records:
            if record.status == "pending":
                record.status = "skipped"
        steps: list[JsonValue] = [record.to_json() for record in records]
        return {
            "steps": steps,
            "completed_steps": sum(record.status == "completed" for record in records),
            "total_steps": len(records),
            "outputs": dict(outputs),
        }

    def _bus_wanted(self) -> bool:
        # Called while the base class initialises: read the contract itself.
        remote = any(step.is_remote for step in self._coordinated_steps())
        return remote or super()._bus_wanted()

    def _bus_topics(self) -> dict[str, int]:
        """Also the siblings' topics, so that one starting later gets commands."""
        topics = super()._bus_topics()
        for step in self._coordinated_steps():
            if step.command_topic and step.reply_topic:
                topics.setdefault(step.command_topic, self.settings.command_partitions)
                topics.setdefault(step.reply_topic, 1)
        return topics

    def _on_bus_connected(self) -> None:
        if self.replies is not None:
            self.replies.start(self.bus)

    def _kind_health(self) -> dict[str, JsonValue]:
        outcomes: dict[str, JsonValue] = dict(sorted(self.workflow_outcomes.items()))
        health: dict[str, JsonValue] = {"workflows": outcomes}
        if self.replies is not None:
            health["workflow_replies"] = self.replies.stats()
        return health

    def _kind_metrics(self, base: dict[str, str]) -> list[str]:
        if self.engine is None:
            return []
        # ``node`` names the node that ran each step, so this family names
        # the orchestrator apart.
        lines = self.engine.render_metrics({"orchestrator": self.node_name})
        if self.replies is not None:
            lines += metric_family(
                "onex_node_workflow_replies_total",
                "counter",
                "Replies of sibling nodes: matched to a step, late, or ignored.",
                [
                    ("", {**base, "result": result}, count)
                    for result, count in (
                        ("matched", self.replies.matched),
                        ("late", self.replies.late),
                        ("ignored", self.replies.ignored),
                    )
                ],
            )
        return lines
