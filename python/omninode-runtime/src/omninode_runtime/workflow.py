"""System workflows: the steps of ``workflow_coordination``, run as a DAG.

A step runs once all the steps it depends on completed, concurrently with
the others that are ready.  A remote step is a command to a sibling node over
the event bus, answered on the sibling's terminal topic under the step's own
correlation id (derived from the request's, so a retry or a replayed request
sends the same id and an effect node runs its side effect once).  A local
step runs one of this node's handlers.  When a step fails, the completed
steps are compensated in reverse order, and the partial result says what ran
where.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import JsonValue

from .bus import EnumBusState, EventBus, build_envelope
from .contract import EnumStepErrorAction, ModelWorkflowCoordination, ModelWorkflowStep
from .errors import HandlerError
from .logs import log_event
from .metrics import metric_family
from .models import ModelNodeInput
from .replies import ReplyRouter

STEP_STATUSES = ("completed", "failed", "timed_out", "skipped", "cancelled")
# Longest wait for the reply consumer to join before a command goes out.
READY_WAIT_S = 5.0


class LocalRunner(Protocol):
    """``NodeRuntime.run_handler``: how a local step runs this node's handler."""

    def __call__(
        self,
        request: ModelNodeInput,
        operation: str,
        *,
        step_outputs: dict[str, JsonValue],
        step: str,
    ) -> Awaitable[dict[str, JsonValue]]:
        """Run ``operation``'s handler as workflow step ``step``."""
        ...


class StepFailedError(RuntimeError):
    """An attempt failed; ``final`` when another attempt cannot help."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        """Fail the attempt with ``message``."""
        super().__init__(message)
        self.final = final


class WorkflowFailedError(HandlerError):
    """The workflow failed; ``outcome`` is ``failed`` or ``timed_out``."""

    def __init__(
        self, message: str, result: dict[str, JsonValue], outcome: str
    ) -> None:
        """Fail with ``message`` and the partial ``result``."""
        super().__init__(message, result)
        self.outcome = outcome


@dataclass
class StepRecord:
    """What happened to one step in one run."""

    step: ModelWorkflowStep
    correlation_id: str
    status: str = "pending"
    attempts: int = 0
    duration_ms: float = 0.0
    # When the step started, in ms after the run started: with duration_ms, the
    # run's timeline (which steps overlapped, which waited for which).
    started_ms: float = 0.0
    error: str | None = None
    output: dict[str, JsonValue] = field(default_factory=dict)

    def to_json(self) -> dict[str, JsonValue]:
        """The step as JSON, naming the node that ran it."""
        return {
            "step": self.step.step_name,
            "node": self.step.node,
            "operation": self.step.operation,
            "correlation_id": self.correlation_id,
            "status": self.status,
            "attempts": self.attempts,
            "started_ms": round(self.started_ms, 3),
            "duration_ms": round(self.duration_ms, 3),
            "error": self.error,
            "output": self.output,
        }


@dataclass
class WorkflowRun:
    """The state of one run: a record per step, outputs in completion order."""

    request: ModelNodeInput
    records: dict[str, StepRecord]
    began: float = field(default_factory=time.perf_counter)
    outputs: dict[str, JsonValue] = field(default_factory=dict)
    compensations: list[JsonValue] = field(default_factory=list)

    def ready(self) -> list[StepRecord]:
        """Pending steps whose dependencies all completed, in contract order."""
        return [
            record
            for record in self.records.values()
            if record.status == "pending"
            and all(dep in self.outputs for dep in record.step.depends_on)
        ]

    def result(self) -> dict[str, JsonValue]:
        """The workflow result (complete or partial)."""
        steps: list[JsonValue] = [r.to_json() for r in self.records.values()]
        return {
            "steps": steps,
            "completed_steps": len(self.outputs),
            "total_steps": len(self.records),
            "outputs": dict(self.outputs),
            "compensations": list(self.compensations),
        }


@dataclass(frozen=True)
class Failure:
    """Why a run stopped, and whether completed steps are compensated."""

    message: str
    outcome: str
    compensate: bool


def step_correlation_id(request_id: uuid.UUID, name: str) -> str:
    """The correlation id of a step's command: stable for a request and step."""
    return str(uuid.uuid5(request_id, name))


class WorkflowEngine:
    """Runs ``workflow_coordination`` for one orchestrator node."""

    def __init__(
        self,
        coordination: ModelWorkflowCoordination,
        *,
        timeout_ms: float,
        run_local: LocalRunner,
        bus: EventBus,
        replies: ReplyRouter | None,
        source: str,
        logger: logging.Logger,
    ) -> None:
        """Run ``coordination``'s steps within ``timeout_ms`` per request."""
        self.coordination = coordination
        self.timeout_ms = timeout_ms
        self.run_local = run_local
        self.bus = bus
        self.replies = replies
        self.source = source
        self.logger = logger
        self.step_counts: dict[tuple[str, str], int] = {}

    async def run(self, request: ModelNodeInput) -> dict[str, JsonValue]:
        """Run every step; WorkflowFailedError (partial result) on failure."""
        run = WorkflowRun(request, self._records(request))
        try:
            async with asyncio.timeout(self.timeout_ms / 1000.0):
                failure = await self._schedule(run)
        except TimeoutError:
            failure = self._timed_out(run)
        self._settle(run, failure)
        if failure is None:
            return run.result()
        if failure.compensate:
            await self._compensate(run)
        raise WorkflowFailedError(failure.message, run.result(), failure.outcome)

    def _records(self, request: ModelNodeInput) -> dict[str, StepRecord]:
        return {
            step.step_name: StepRecord(
                step,
                step_correlation_id(request.correlation_id, step.step_name)
                if step.is_remote
                else str(request.correlation_id),
            )
            for step in self.coordination.steps
        }

    async def _schedule(self, run: WorkflowRun) -> Failure | None:
        """Start each step once it is ready; stop at the first failure."""
        running: dict[asyncio.Task[None], StepRecord] = {}
        sequential = self.coordination.execution_mode == "sequential"
        try:
            while True:
                ready = run.ready()
                if sequential:
                    ready = ready[: 0 if running else 1]
                for record in ready:
                    record.status = "running"
                    task = asyncio.create_task(self._run_step(run, record))
                    running[task] = record
                if not running:
                    return None
                done, _ = await asyncio.wait(
                    running, return_when=asyncio.FIRST_COMPLETED
                )
                finished = [running.pop(task) for task in done]
                failed = [r for r in finished if r.status != "completed"]
                if failed:
                    return self._step_failed(failed[0])
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def _step_failed(self, record: StepRecord) -> Failure:
        step = record.step
        verb = "timed out" if record.status == "timed_out" else "failed"
        return Failure(
            f"workflow step {step.step_name!r} {verb} on node {step.node}: "
            f"{record.error}",
            "timed_out" if record.status == "timed_out" else "failed",
            step.error_action is EnumStepErrorAction.COMPENSATE,
        )

    def _timed_out(self, run: WorkflowRun) -> Failure:
        """The whole run ran out of time: the running steps timed out."""
        running = [r for r in run.records.values() if r.status == "running"]
        for record in running:
            record.status = "timed_out"
            record.error = (
                f"the workflow's timeout_ms={self.timeout_ms:g} ran out while "
                f"{self._waiting_for(record.step)}"
            )
        return Failure(
            f"workflow exceeded timeout_ms={self.timeout_ms:g}",
            "timed_out",
            not running
            or any(
                r.step.error_action is EnumStepErrorAction.COMPENSATE for r in running
            ),
        )

    @staticmethod
    def _waiting_for(step: ModelWorkflowStep) -> str:
        if step.is_remote:
            return (
                f"waiting for node {step.node} to reply on {step.reply_topic} "
                f"(command on {step.command_topic})"
            )
        return f"node {step.node} ran {step.operation!r} locally"

    def _settle(self, run: WorkflowRun, failure: Failure | None) -> None:
        """Name what became of the steps that did not finish; count them all."""
        for record in run.records.values():
            if record.status == "pending":
                record.status = "skipped"
            elif record.status == "running" and failure is not None:
                record.status = "cancelled"
                record.error = f"cancelled: {failure.message}"
            key = (record.step.step_name, record.status)
            self.step_counts[key] = self.step_counts.get(key, 0) + 1

    # -- one step --------------------------------------------------------------

    async def _run_step(self, run: WorkflowRun, record: StepRecord) -> None:
        """Run ``record``'s step, retrying; the record says how it ended."""
        step = record.step
        began = time.perf_counter()
        record.started_ms = (began - run.began) * 1000.0
        try:
            for attempt in range(1, step.retry_count + 2):
                record.attempts, record.status = attempt, "running"
                try:
                    async with asyncio.timeout(step.timeout_ms / 1000.0):
                        output = await self._attempt(run, record)
                except TimeoutError:
                    record.status = "timed_out"
                    record.error = (
                        f"no result within timeout_ms={step.timeout_ms:g}: "
                        f"{self._waiting_for(step)}"
                    )
                except Exception as exc:
                    record.status, record.error = "failed", _describe(exc)
                    if isinstance(exc, StepFailedError) and exc.final:
                        return
                else:
                    record.status, record.error = "completed", None
                    record.output = run.outputs[step.step_name] = output
                    return
                self._log_attempt(record, attempt)
        finally:
            record.duration_ms = (time.perf_counter() - began) * 1000.0

    def _log_attempt(self, record: StepRecord, attempt: int) -> None:
        log_event(
            self.logger,
            logging.WARNING,
            "workflow_step_attempt_failed",
            step=record.step.step_name,
            node=record.step.node,
            attempt=attempt,
            attempts=record.step.retry_count + 1,
            status=record.status,
            error=record.error,
        )

    async def _attempt(
        self, run: WorkflowRun, record: StepRecord
    ) -> dict[str, JsonValue]:
        step = record.step
        if not step.is_remote:
            return await self.run_local(
                run.request,
                step.operation,
                step_outputs=dict(run.outputs),
                step=step.step_name,
            )
        upstream: dict[str, JsonValue] = {
            dep: run.outputs[dep] for dep in step.depends_on
        }
        payload = {**run.request.payload, "upstream": upstream}
        return await self._call(step, step.operation, record.correlation_id, payload)

    async def _call(
        self,
        step: ModelWorkflowStep,
        operation: str,
        correlation_id: str,
        payload: dict[str, JsonValue],
    ) -> dict[str, JsonValue]:
        """Send ``operation`` to the step's node and wait for its output's result."""
        replies, topic = self.replies, str(step.command_topic)
        if self.bus.state is not EnumBusState.CONNECTED or replies is None:
            raise StepFailedError(
                f"cannot send {operation!r} to node {step.node} on {topic}: "
                f"the event bus is {self.bus.state.value} ({self.bus.reason})",
                final=True,
            )
        future = replies.expect(correlation_id)
        try:
            if not await replies.wait_ready(READY_WAIT_S):
                log_event(
                    self.logger,
                    logging.WARNING,
                    "reply_consumer_not_ready",
                    topics=[*replies.topics],
                )
            command: dict[str, JsonValue] = {
                "operation": operation,
                "correlation_id": correlation_id,
                "payload": payload,
            }
            envelope = build_envelope(
                payload=command,
                event_type=topic,
                source_tool=self.source,
                correlation_id=correlation_id,
            )
            if not self.bus.publish(topic, correlation_id, envelope):
                raise StepFailedError(f"cannot queue the command on {topic}")
            body = await future
        finally:
            replies.forget(correlation_id, future)
        return _result_of(step, body)

    # -- compensation ----------------------------------------------------------

    async def _compensate(self, run: WorkflowRun) -> None:
        """Undo the completed steps that can be undone, newest first."""
        for name in reversed(list(run.outputs)):
            step = run.records[name].step
            if step.compensation_operation is None:
                continue
            entry: dict[str, JsonValue] = {
                "step": name,
                "node": step.node,
                "operation": step.compensation_operation,
                "status": "completed",
                "error": None,
            }
            try:
                async with asyncio.timeout(step.timeout_ms / 1000.0):
                    await self._undo(run, step)
            except TimeoutError:
                entry["status"] = "timed_out"
                entry["error"] = (
                    f"no result within timeout_ms={step.timeout_ms:g}: "
                    f"{self._waiting_for(step)}"
                )
            except Exception as exc:
                entry["status"], entry["error"] = "failed", _describe(exc)
            run.compensations.append(entry)

    async def _undo(self, run: WorkflowRun, step: ModelWorkflowStep) -> None:
        operation = str(step.compensation_operation)
        payload: dict[str, JsonValue] = {
            **run.request.payload,
            "compensating": step.step_name,
            "step_result": run.outputs[step.step_name],
        }
        if step.is_remote:
            request_id = run.request.correlation_id
            correlation_id = step_correlation_id(
                request_id, f"{step.step_name}/compensate"
            )
            await self._call(step, operation, correlation_id, payload)
            return
        request = run.request.model_copy(update={"payload": payload})
        await self.run_local(
            request,
            operation,
            step_outputs=dict(run.outputs),
            step=step.step_name,
        )

    # -- metrics ---------------------------------------------------------------

    def render_metrics(self, base: Mapping[str, str]) -> list[str]:
        """``onex_node_workflow_steps_total{step,node,status}`` (zeros included)."""
        samples: list[tuple[str, Mapping[str, str], float]] = [
            (
                "",
                {**base, "step": s.step_name, "node": s.node, "status": status},
                self.step_counts.get((s.step_name, status), 0),
            )
            for s in self.coordination.steps
            for status in STEP_STATUSES
        ]
        return metric_family(
            "onex_node_workflow_steps_total",
            "counter",
            "Workflow steps run, by step, the node that ran it and status.",
            samples,
        )


def _result_of(
    step: ModelWorkflowStep, body: dict[str, JsonValue]
) -> dict[str, JsonValue]:
    """The ``result`` of a sibling's output; StepFailedError if it failed."""
    if body.get("success") is not True:
        error = body.get("error") or "the reply does not say success"
        raise StepFailedError(f"node {step.node} answered: {error}")
    result = body.get("result")
    return result if isinstance(result, dict) else {}


def _describe(exc: Exception) -> str:
    """An exception as an error message (the type only when it adds something)."""
    if isinstance(exc, (StepFailedError, HandlerError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
