"""Structured logs: one JSON object per line on stderr.

Every line carries ``ts``, ``level``, ``logger``, ``event``, the node identity
(``node_name``, ``node_id``) and, while a request is being processed, its
``correlation_id`` and the ``trace_id`` and ``span_id`` of its W3C trace
context (see ``tracecontext``), so a log pipeline can follow one request
across nodes.
Libraries logging through :mod:`logging` get the same shape for free.
"""

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

from pydantic import JsonValue

from .tracecontext import current_trace

LogFormat = Literal["json", "text"]

_FIELDS_ATTR = "onex_fields"
_correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
_identity: dict[str, JsonValue] = {}
_installed: list[logging.Handler] = []


def set_identity(**fields: JsonValue) -> None:
    """Add ``fields`` (``node_name``, ``node_id``) to every later log line."""
    _identity.update(fields)


def current_correlation_id() -> str | None:
    """The correlation id of the request being processed in this context."""
    return _correlation_id.get()


@contextmanager
def correlation_scope(correlation_id: object) -> Iterator[None]:
    """Tag every log line written inside the block with ``correlation_id``."""
    token = _correlation_id.set(str(correlation_id))
    try:
        yield
    finally:
        _correlation_id.reset(token)


def _context_fields() -> dict[str, JsonValue]:
    """``correlation_id``, ``trace_id`` and ``span_id`` of the work running now."""
    fields: dict[str, JsonValue] = {}
    correlation_id = _correlation_id.get()
    if correlation_id is not None:
        fields["correlation_id"] = correlation_id
    trace = current_trace()
    if trace is not None:
        fields["trace_id"] = trace.trace_id
        fields["span_id"] = trace.span_id
    return fields


def log_event(
    logger: logging.Logger, level: int, event: str, **fields: JsonValue
) -> None:
    """Log ``event`` with structured ``fields`` (kept apart from the message)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS_ATTR: fields})


def _record_fields(record: logging.LogRecord) -> dict[str, JsonValue]:
    fields: object = getattr(record, _FIELDS_ATTR, None)
    return dict(fields) if isinstance(fields, dict) else {}


class JsonLogFormatter(logging.Formatter):
    """Render a record as one JSON object (``default=str`` keeps it total)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        line: dict[str, JsonValue] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_identity,
            **_context_fields(),
        }
        line.update(_record_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextLogFormatter(logging.Formatter):
    """Human-readable lines for local runs: ``time level logger: event k=v``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as ``time level logger: event key=value ...``."""
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")
        fields = _record_fields(record)
        for key, value in _context_fields().items():
            fields.setdefault(key, value)
        details = " ".join(
            f"{key}={json.dumps(value, default=str)}" for key, value in fields.items()
        )
        text = f"{stamp[:-3]} {record.levelname} {record.name}: {record.getMessage()}"
        text = f"{text} {details}" if details else text
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


def configure_logging(log_format: LogFormat = "json", level: str = "INFO") -> None:
    """Send every log record to stderr in ``log_format`` (replacing earlier setup)."""
    root = logging.getLogger()
    while _installed:
        root.removeHandler(_installed.pop())
    stream = logging.StreamHandler(sys.stderr)
    _installed.append(stream)
    formatter = JsonLogFormatter() if log_format == "json" else TextLogFormatter()
    stream.setFormatter(formatter)
    root.addHandler(stream)
    root.setLevel(level.upper())
