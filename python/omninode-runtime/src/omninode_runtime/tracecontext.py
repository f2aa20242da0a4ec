"""W3C Trace Context propagation: continue the caller's trace, hand it on.

The operator starts a trace per generation and passes its ``traceparent``
to each node in the ``TRACEPARENT`` environment variable; clients put one on
every command (Kafka header) or request (HTTP header) ``traceparent``.  The
node works in a child context of it (same trace id, a span id of its own),
writes ``trace_id`` and ``span_id`` on its log lines and sends its own
``traceparent`` with everything it publishes, so the next node continues the
same trace.  Nodes record no spans: this is propagation and log correlation
only, hand-written so that nodes need no OpenTelemetry SDK.

See https://www.w3.org/TR/trace-context/ (``tracestate`` is not carried).
"""

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

TRACEPARENT_HEADER = "traceparent"
TRACEPARENT_ENV = "TRACEPARENT"
SAMPLED = 0x01

# version-traceid-parentid-flags, lowercase hex only (the spec's HEXDIGLC).
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})"
    r"-(?P<span_id>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})"
)
_VERSION_00_LENGTH = 55


@dataclass(frozen=True)
class TraceContext:
    """One position in a trace: the trace, the current span and its flags."""

    trace_id: str
    span_id: str
    flags: int = SAMPLED

    @property
    def traceparent(self) -> str:
        """This context as a version-00 ``traceparent`` value."""
        return format_traceparent(self)


_current: ContextVar[TraceContext | None] = ContextVar("trace", default=None)


def format_traceparent(context: TraceContext) -> str:
    """``00-<trace id>-<span id>-<flags>``."""
    return f"00-{context.trace_id}-{context.span_id}-{context.flags:02x}"


def parse_traceparent(value: str | bytes | None) -> TraceContext | None:
    """The context a ``traceparent`` value carries; None when it is invalid.

    Version 00 is exactly 55 characters.  A later version may append fields
    after a ``-``, which are ignored (the spec's forward compatibility);
    version ``ff``, all-zero ids and upper-case hex are invalid.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if value is None:
        return None
    value = value.strip(" \t")  # optional whitespace around an HTTP field value
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version = match["version"]
    if version == "ff":
        return None
    rest = value[_VERSION_00_LENGTH:]
    if rest and (version == "00" or not rest.startswith("-")):
        return None
    trace_id, span_id = match["trace_id"], match["span_id"]
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceContext(trace_id, span_id, int(match["flags"], 16))


def _random_hex(size: int) -> str:
    """``size`` random bytes as hex, never all zero (an invalid id)."""
    while True:
        data = secrets.token_bytes(size)
        if any(data):
            return data.hex()


def new_root() -> TraceContext:
    """A new trace, sampled so that tracers downstream record the rest of it."""
    return TraceContext(_random_hex(16), _random_hex(8), SAMPLED)


def child_of(parent: TraceContext) -> TraceContext:
    """A new span in ``parent``'s trace (same trace id and flags)."""
    return TraceContext(parent.trace_id, _random_hex(8), parent.flags)


def continue_trace(traceparent: str | bytes | None) -> TraceContext:
    """A child of the caller's context, or a new root without a valid one."""
    parent = parse_traceparent(traceparent)
    return new_root() if parent is None else child_of(parent)


def current_trace() -> TraceContext | None:
    """The context of the work running now (None outside any)."""
    return _current.get()


def current_traceparent() -> str | None:
    """``traceparent`` of the work running now, to send with what it causes."""
    context = _current.get()
    return None if context is None else context.traceparent


@contextmanager
def trace_scope(context: TraceContext | None) -> Iterator[None]:
    """Run the block in ``context`` (None: outside any trace).

    Asyncio tasks created inside copy it, as do coroutines handed to
    ``asyncio.run_coroutine_threadsafe`` from a thread inside the block.
    """
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)
