"""The contract's ``mixins``: behaviours the runtime applies around handlers.

ONEX nodes declare capabilities such as ``MixinRetry`` by name in their
contract; here each name maps to a small object with optional hooks
(``check_input`` before a request, ``around`` each handler call, ``observe``
after it, plus health and metrics).  Composition instead of multiple
inheritance keeps generated node classes declarative and their MRO trivial.
"""

import asyncio
import copy
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import ClassVar, NoReturn

from pydantic import JsonValue

from ._json import canonical_json, json_size
from .errors import CircuitOpenError, HandlerError, InvalidInputError
from .logs import log_event
from .metrics import LatencyHistogram, metric_family
from .models import ModelNodeInput, ModelNodeSettings

HandlerCall = Callable[[], Awaitable[dict[str, JsonValue]]]
HealthCheck = Callable[[], bool]

_logger = logging.getLogger("omninode_runtime.mixins")


class RuntimeMixin:
    """Base of every mixin: each hook does nothing unless overridden."""

    name: ClassVar[str] = ""

    def check_input(self, request: ModelNodeInput) -> None:
        """Raise InvalidInputError to refuse ``request`` before it runs."""

    async def around(self, call: HandlerCall) -> dict[str, JsonValue]:
        """Run one handler call (wrap it to retry, time or guard it)."""
        return await call()

    def observe(self, operation: str, outcome: str, seconds: float) -> None:
        """Called once per finished request."""

    def not_ready_reasons(self) -> list[str]:
        """Why the node should not receive traffic (empty: no objection)."""
        return []

    def stats(self) -> dict[str, JsonValue]:
        """State and counters for the health body."""
        return {}

    def render_metrics(self, base: Mapping[str, str]) -> list[str]:
        """Extra Prometheus lines."""
        return []


class MixinRetry(RuntimeMixin):
    """Retry transient failures (connection errors, timeouts) with backoff."""

    name = "MixinRetry"

    def __init__(
        self,
        max_attempts: int = 3,
        base_delay_s: float = 0.05,
        max_delay_s: float = 1.0,
        retry_on: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError),
    ) -> None:
        """Try a call up to ``max_attempts`` times, doubling the delay each time."""
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.retry_on = retry_on
        self.retries = 0

    def delay_s(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based)."""
        return min(self.max_delay_s, self.base_delay_s * (2.0 ** (attempt - 1)))

    async def around(self, call: HandlerCall) -> dict[str, JsonValue]:
        """Await ``call()``; on a transient error wait and try again."""
        attempt = 1
        while True:
            try:
                return await call()
            except self.retry_on as exc:
                if attempt >= self.max_attempts:
                    raise
                delay = self.delay_s(attempt)
                log_event(
                    _logger,
                    logging.INFO,
                    "retrying",
                    attempt=attempt,
                    error=str(exc),
                    delay_s=delay,
                )
                self.retries += 1
                attempt += 1
                await asyncio.sleep(delay)

    def stats(self) -> dict[str, JsonValue]:
        """Settings and the number of retries so far."""
        return {"max_attempts": self.max_attempts, "retries": self.retries}


class MixinCircuitBreaker(RuntimeMixin):
    """Fail fast after repeated failures, then let one trial call through.

    After ``failure_threshold`` consecutive failures the circuit opens and
    calls fail at once with CircuitOpenError; after ``recovery_s`` one trial
    is let through (half-open) and its outcome closes or reopens the circuit.
    Bad input (ValueError) and failures a handler reports itself (HandlerError)
    say nothing about the dependency's health and are not counted.
    """

    name = "MixinCircuitBreaker"

    def __init__(self, failure_threshold: int = 5, recovery_s: float = 30.0) -> None:
        """Start closed."""
        self.failure_threshold = failure_threshold
        self.recovery_s = recovery_s
        self.failures = 0
        self.opens = 0
        self.rejections = 0
        self._state = "closed"
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        if (
            self._state == "open"
            and time.monotonic() - self._opened_at >= self.recovery_s
        ):
            self._state = "half_open"
        return self._state

    async def around(self, call: HandlerCall) -> dict[str, JsonValue]:
        """Run ``call`` unless the circuit is open; record its outcome."""
        state = self.state
        if state == "open" or (state == "half_open" and self._trial_running):
            self.rejections += 1
            raise CircuitOpenError(
                f"circuit open after {self.failures} consecutive failures; "
                f"retrying after {self.recovery_s:g} s"
            )
        self._trial_running = state == "half_open"
        try:
            result = await call()
        except (ValueError, HandlerError):
            raise
        except Exception:
            self.failures += 1
            if state == "half_open" or self.failures >= self.failure_threshold:
                self._state = "open"
                self._opened_at = time.monotonic()
                self.opens += 1
            raise
        finally:
            self._trial_running = False
        self._state = "closed"
        self.failures = 0
        return result

    def stats(self) -> dict[str, JsonValue]:
        """State and counters of the circuit."""
        return {
            "state": self.state,
            "consecutive_failures": self.failures,
            "failure_threshold": self.failure_threshold,
            "opens": self.opens,
            "rejections": self.rejections,
        }


class MixinCaching(RuntimeMixin):
    """Bounded LRU cache of results with a time to live (compute nodes use it)."""

    name = "MixinCaching"

    def __init__(self, max_entries: int = 256, ttl_s: float = 300.0) -> None:
        """Hold at most ``max_entries`` results for ``ttl_s`` seconds each."""
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[str, tuple[float, dict[str, JsonValue]]] = (
            OrderedDict()
        )

    @staticmethod
    def key(*parts: JsonValue) -> str:
        """Stable key of ``parts`` (SHA-256 of their canonical JSON)."""
        return hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, JsonValue] | None:
        """A copy of the cached value, or None when absent or expired."""
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry[0] > self.ttl_s:
            del self._entries[key]
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return copy.deepcopy(entry[1])

    def put(self, key: str, value: dict[str, JsonValue]) -> None:
        """Store a copy of ``value``, evicting the least recently used entries."""
        self._entries[key] = (time.monotonic(), copy.deepcopy(value))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        """Drop every cached value."""
        self._entries.clear()

    def stats(self) -> dict[str, JsonValue]:
        """Size and hit/miss/eviction counts."""
        return {
            "entries": len(self._entries),
            "max_entries": self.max_entries,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }


class _Rejecting(RuntimeMixin):
    """A mixin that refuses requests and counts how often it did."""

    def __init__(self) -> None:
        self.rejections = 0

    def _reject(self, message: str) -> NoReturn:
        self.rejections += 1
        raise InvalidInputError(message)


class MixinValidation(_Rejecting):
    """Structural payload limits: nesting depth, number of values, finite numbers."""

    name = "MixinValidation"

    def __init__(self, max_depth: int = 32, max_items: int = 10_000) -> None:
        """Accept at most ``max_depth`` levels and ``max_items`` values."""
        super().__init__()
        self.max_depth = max_depth
        self.max_items = max_items

    def check_input(self, request: ModelNodeInput) -> None:
        """Refuse payloads that are too deep, too big or have empty keys."""
        items = 0
        stack: list[tuple[str, JsonValue, int]] = [("payload", request.payload, 1)]
        while stack:
            path, value, depth = stack.pop()
            if depth > self.max_depth:
                self._reject(f"{path} is nested deeper than {self.max_depth} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    if not key.strip():
                        self._reject(f"{path} has an empty key")
                    stack.append((f"{path}.{key}", item, depth + 1))
                items += len(value)
            elif isinstance(value, list):
                stack.extend(
                    (f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value)
                )
                items += len(value)
            elif isinstance(value, float) and not math.isfinite(value):
                self._reject(f"{path} is not a finite number")
            if items > self.max_items:
                self._reject(f"payload has more than {self.max_items} values")

    def stats(self) -> dict[str, JsonValue]:
        """Limits and the number of refused payloads."""
        return {
            "max_depth": self.max_depth,
            "max_items": self.max_items,
            "rejections": self.rejections,
        }


FORBIDDEN_PAYLOAD_KEYS = frozenset(
    {
        "__builtins__",
        "__class__",
        "__globals__",
        "__proto__",
        "constructor",
        "prototype",
    }
)
SENSITIVE_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "credential",
    "private_key",
)


class MixinSecurity(_Rejecting):
    """Payload hardening: size, key length, prototype-pollution keys, NUL bytes."""

    name = "MixinSecurity"

    def __init__(
        self, max_payload_bytes: int = 1_048_576, max_key_length: int = 256
    ) -> None:
        """Refuse payloads over ``max_payload_bytes``, keys over ``max_key_length``."""
        super().__init__()
        self.max_payload_bytes = max_payload_bytes
        self.max_key_length = max_key_length

    def check_input(self, request: ModelNodeInput) -> None:
        """Refuse payloads that break a security rule."""
        size = json_size(request.payload)
        if size > self.max_payload_bytes:
            self._reject(
                f"payload is {size} bytes; the limit is {self.max_payload_bytes}"
            )
        stack: list[JsonValue] = [request.payload]
        while stack:
            value = stack.pop()
            if isinstance(value, dict):
                for key, item in value.items():
                    self._check_key(key)
                    stack.append(item)
            elif isinstance(value, list):
                stack.extend(value)
            elif isinstance(value, str) and "\x00" in value:
                self._reject("payload strings must not contain NUL characters")

    def _check_key(self, key: str) -> None:
        if key in FORBIDDEN_PAYLOAD_KEYS:
            self._reject(f"payload key {key!r} is not allowed")
        if len(key) > self.max_key_length:
            self._reject(
                f"payload key of {len(key)} characters; "
                f"the limit is {self.max_key_length}"
            )
        if any(ord(char) < 32 or ord(char) == 127 for char in key):
            self._reject(f"payload key {key!r} contains control characters")

    @staticmethod
    def redact(value: JsonValue) -> JsonValue:
        """A copy of ``value`` with the values of secret-looking keys masked."""
        if isinstance(value, dict):
            return {
                key: "***"
                if any(part in key.lower() for part in SENSITIVE_KEY_PARTS)
                else MixinSecurity.redact(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [MixinSecurity.redact(item) for item in value]
        return value

    def stats(self) -> dict[str, JsonValue]:
        """Limits and the number of refused payloads."""
        return {
            "max_payload_bytes": self.max_payload_bytes,
            "max_key_length": self.max_key_length,
            "rejections": self.rejections,
        }


class MixinHealthCheck(RuntimeMixin):
    """Named checks that decide readiness (``/health/ready``)."""

    name = "MixinHealthCheck"

    def __init__(self) -> None:
        """Start without checks; the runtime registers its own at start-up."""
        self._checks: dict[str, HealthCheck] = {}

    def register(self, name: str, check: HealthCheck) -> None:
        """Register (or replace) check ``name``; it returns True when healthy."""
        if not name:
            raise ValueError("a health check needs a name")
        self._checks[name] = check

    def run(self) -> dict[str, JsonValue]:
        """Run every check: ``{name: {"ok": bool, "detail": str}}``."""
        results: dict[str, JsonValue] = {}
        for name, check in sorted(self._checks.items()):
            try:
                ok = bool(check())
                detail = "ok" if ok else "check failed"
            except Exception as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            results[name] = {"ok": ok, "detail": detail}
        return results

    def not_ready_reasons(self) -> list[str]:
        """One reason per failing check."""
        return [
            f"health check {name!r} failing"
            for name, result in self.run().items()
            if not (isinstance(result, dict) and result.get("ok") is True)
        ]

    def stats(self) -> dict[str, JsonValue]:
        """The result of every check."""
        return self.run()


class MixinLogging(RuntimeMixin):
    """Log every request at INFO (not only failures) and count log lines."""

    name = "MixinLogging"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        """Log through ``logger`` (default: the runtime's request logger)."""
        self.logger = logger or logging.getLogger("omninode_runtime.requests")
        self.counts: dict[str, int] = {}

    def observe(self, operation: str, outcome: str, seconds: float) -> None:
        """Write ``request_processed`` with the operation, outcome and duration."""
        level = logging.INFO if outcome == "success" else logging.WARNING
        name = logging.getLevelName(level).lower()
        self.counts[name] = self.counts.get(name, 0) + 1
        log_event(
            self.logger,
            level,
            "request_processed",
            operation=operation,
            outcome=outcome,
            elapsed_ms=round(seconds * 1000.0, 3),
        )

    def stats(self) -> dict[str, JsonValue]:
        """Request log lines written, by level."""
        return dict(sorted(self.counts.items()))


_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


class MixinMetrics(RuntimeMixin):
    """Latency histograms per operation, plus counters handlers may add to."""

    name = "MixinMetrics"

    def __init__(self) -> None:
        """Empty histograms and counters."""
        self.latency = LatencyHistogram()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def observe(self, operation: str, outcome: str, seconds: float) -> None:
        """Add the request's duration to its operation's histogram."""
        self.latency.observe(operation, seconds)

    def increment_counter(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to ``onex_node_<name>_total{labels}``."""
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name: {name!r}")
        if amount < 0:
            raise ValueError("counters only increase")
        key = (name, tuple(sorted(labels.items())))
        self._counters[key] = self._counters.get(key, 0.0) + amount

    def render_metrics(self, base: Mapping[str, str]) -> list[str]:
        """The latency histogram and the custom counters."""
        lines = self.latency.render("onex_node_request_latency_seconds", base)
        for counter in sorted({name for name, _ in self._counters}):
            samples = [
                ("", {**base, **dict(pairs)}, value)
                for (name, pairs), value in sorted(self._counters.items())
                if name == counter
            ]
            lines += metric_family(
                f"onex_node_{counter}_total",
                "counter",
                f"Handler counter {counter}.",
                samples,
            )
        return lines


class MixinEventBus(RuntimeMixin):
    """Publish every outcome on ``terminal_event``, not only bus-driven ones.

    Without it a node answers bus commands on the bus and HTTP calls over
    HTTP; with it HTTP and direct calls are announced on the bus as well.
    """

    name = "MixinEventBus"


# Handler calls are wrapped innermost first: a retry re-enters the breaker.
WRAP_ORDER = ("MixinCircuitBreaker", "MixinRetry")


def build_mixins(
    names: Sequence[str], settings: ModelNodeSettings
) -> tuple[dict[str, RuntimeMixin], list[str]]:
    """The mixins named in a contract, configured from ``settings``.

    Returns them by name, and the names this runtime does not know (ignored,
    so a newer generator's contract still runs on this runtime).
    """
    factories: dict[str, Callable[[], RuntimeMixin]] = {
        "MixinCaching": lambda: MixinCaching(
            settings.cache_max_entries, settings.cache_ttl_s
        ),
        "MixinCircuitBreaker": lambda: MixinCircuitBreaker(
            settings.circuit_failure_threshold, settings.circuit_recovery_s
        ),
        "MixinEventBus": MixinEventBus,
        "MixinHealthCheck": MixinHealthCheck,
        "MixinLogging": MixinLogging,
        "MixinMetrics": MixinMetrics,
        "MixinRetry": lambda: MixinRetry(
            settings.retry_max_attempts,
            settings.retry_base_delay_s,
            settings.retry_max_delay_s,
        ),
        "MixinSecurity": lambda: MixinSecurity(
            settings.max_payload_bytes, settings.max_key_length
        ),
        "MixinValidation": lambda: MixinValidation(
            settings.max_payload_depth, settings.max_payload_items
        ),
    }
    built = {
        name: factories[name]() for name in sorted(set(names)) if name in factories
    }
    unknown = [name for name in names if name not in factories]
    return built, unknown


async def call_through(
    mixins: Mapping[str, RuntimeMixin], call: HandlerCall
) -> dict[str, JsonValue]:
    """Run ``call`` wrapped by the resilience mixins present (see WRAP_ORDER)."""
    wrapped = call
    for name in WRAP_ORDER:
        mixin = mixins.get(name)
        if mixin is not None:
            wrapped = _bind(mixin, wrapped)
    return await wrapped()


def _bind(mixin: RuntimeMixin, call: HandlerCall) -> HandlerCall:
    async def run() -> dict[str, JsonValue]:
        return await mixin.around(call)

    return run
