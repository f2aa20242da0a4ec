"""What a handler gets besides its request: the node's state and identity.

The stores are in memory and bounded on purpose: they are working defaults a
team replaces with real systems (a database, a mail service) inside its
handlers, and a node must never grow without limit while it relies on them.
"""

import copy
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from uuid import UUID

from pydantic import JsonValue

from ._json import deep_merge, numeric_leaves
from .contract import EnumNodeKind, ModelContract
from .logs import log_event


class SequenceCounter:
    """Monotonic counter shared by a node's side effects (orders them in results)."""

    def __init__(self) -> None:
        """Start at 0; the first ``next()`` returns 1."""
        self.value = 0

    def next(self) -> int:
        """The next sequence number."""
        self.value += 1
        return self.value


class RecordStore:
    """Bounded key -> JSON record store; the least recently written is evicted."""

    def __init__(self, max_records: int = 10_000) -> None:
        """Hold at most ``max_records`` records."""
        self.max_records = max_records
        self._records: OrderedDict[str, dict[str, JsonValue]] = OrderedDict()

    def __len__(self) -> int:
        """Number of stored records."""
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is stored."""
        return key in self._records

    def get(self, key: str) -> dict[str, JsonValue] | None:
        """A copy of record ``key`` (callers cannot change the store by accident)."""
        record = self._records.get(key)
        return copy.deepcopy(record) if record is not None else None

    def put(
        self, key: str, record: dict[str, JsonValue], *, merge: bool = False
    ) -> tuple[bool, int]:
        """Store a copy of ``record`` (its keys over the existing ones if ``merge``).

        Returns ``(created, evicted)``: whether ``key`` is new and how many old
        records were dropped to stay within ``max_records``.
        """
        existing = self._records.pop(key, None)
        stored: dict[str, JsonValue] = dict(existing) if merge and existing else {}
        stored.update(copy.deepcopy(record))
        self._records[key] = stored
        evicted = 0
        while len(self._records) > self.max_records:
            self._records.popitem(last=False)
            evicted += 1
        return existing is None, evicted

    def delete(self, key: str) -> bool:
        """Delete record ``key``; False when it did not exist."""
        return self._records.pop(key, None) is not None

    def keys(self) -> list[str]:
        """Stored keys, least recently written first."""
        return list(self._records)


class Outbox:
    """Bounded list of messages a node would have sent (newest kept)."""

    def __init__(self, max_messages: int = 1_000) -> None:
        """Keep the last ``max_messages`` messages."""
        self.max_messages = max_messages
        self._messages: deque[dict[str, JsonValue]] = deque(maxlen=max_messages)

    def __len__(self) -> int:
        """Number of messages held."""
        return len(self._messages)

    def append(self, message: dict[str, JsonValue]) -> None:
        """Queue a copy of ``message``."""
        self._messages.append(copy.deepcopy(message))

    def messages(self) -> list[dict[str, JsonValue]]:
        """Copies of the held messages, oldest first."""
        return [copy.deepcopy(message) for message in self._messages]


class ReducerState:
    """Accumulated reducer state: counts, numeric totals and a merged object.

    Each correlation id is folded at most once (a bounded duplicate filter),
    and events are counted per aggregation window of ``window_ms``.
    """

    def __init__(self, window_ms: float = 60_000.0, max_seen: int = 10_000) -> None:
        """Aggregate over windows of ``window_ms``; remember ``max_seen`` ids."""
        self.window_ms = window_ms
        self._max_seen = max_seen
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.reset()

    def reset(self) -> None:
        """Forget the accumulated state; the duplicate filter is kept."""
        self.reductions = 0
        self._by_operation: dict[str, int] = {}
        self._numeric: dict[str, tuple[int, float, float, float]] = {}
        self._merged: dict[str, JsonValue] = {}
        self._window_started = time.monotonic()
        self.window_events = 0
        self._windows_closed = 0

    def fold(
        self, correlation_id: str, operation: str, payload: dict[str, JsonValue]
    ) -> bool:
        """Fold ``payload`` in; False (and no change) for a seen correlation id."""
        self._roll_window()
        if correlation_id in self._seen:
            return False
        self._seen[correlation_id] = None
        while len(self._seen) > self._max_seen:
            self._seen.popitem(last=False)
        self.reductions += 1
        self.window_events += 1
        self._by_operation[operation] = self._by_operation.get(operation, 0) + 1
        for path, number in numeric_leaves(payload):
            count, total, low, high = self._numeric.get(path, (0, 0.0, number, number))
            self._numeric[path] = (
                count + 1,
                total + number,
                min(low, number),
                max(high, number),
            )
        deep_merge(self._merged, payload)
        return True

    def snapshot(self) -> dict[str, JsonValue]:
        """The state as JSON."""
        self._roll_window()
        by_operation: dict[str, JsonValue] = dict(sorted(self._by_operation.items()))
        numeric: dict[str, JsonValue] = {
            path: {
                "count": count,
                "sum": total,
                "min": low,
                "max": high,
                "mean": total / count,
            }
            for path, (count, total, low, high) in sorted(self._numeric.items())
        }
        return {
            "reductions": self.reductions,
            "by_operation": by_operation,
            "numeric": numeric,
            "merged": copy.deepcopy(self._merged),
            "window": {
                "size_ms": self.window_ms,
                "events": self.window_events,
                "closed": self._windows_closed,
            },
        }

    def _roll_window(self) -> None:
        window_s = self.window_ms / 1000.0
        elapsed_s = time.monotonic() - self._window_started
        if window_s > 0 and elapsed_s >= window_s:
            closed = int(elapsed_s // window_s)
            self._windows_closed += closed
            self._window_started += closed * window_s
            self.window_events = 0


@dataclass(frozen=True, kw_only=True)
class HandlerContext:
    """Everything a handler may use besides its request; one per handler call.

    ``records``, ``outbox`` and ``state`` are the node's long-lived in-memory
    stores (the same objects on every call); ``step`` and ``step_outputs`` are
    set for orchestrator workflow steps only.
    """

    node_name: str
    node_kind: EnumNodeKind
    contract: ModelContract
    operation: str
    correlation_id: UUID
    records: RecordStore
    outbox: Outbox
    state: ReducerState
    sequence: SequenceCounter
    logger: logging.Logger
    workflow: tuple[str, ...] = ()
    step: str | None = None
    step_outputs: dict[str, JsonValue] = field(default_factory=dict)

    def log(self, event: str, level: int = logging.INFO, **fields: JsonValue) -> None:
        """Write a structured log line (it carries the correlation id)."""
        log_event(self.logger, level, event, operation=self.operation, **fields)
