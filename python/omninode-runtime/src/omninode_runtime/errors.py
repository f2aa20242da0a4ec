"""Exceptions that decide a request's outcome.

``HandlerError`` is how a handler reports a failure it understands (the
output then carries its partial result); ``InvalidInputError`` is the
runtime's own verdict on a request it refuses to run (outcome ``invalid``).
"""

from pydantic import JsonValue


class HandlerError(RuntimeError):
    """An operation failed; ``result`` holds what it produced before failing."""

    def __init__(
        self, message: str, result: dict[str, JsonValue] | None = None
    ) -> None:
        """Fail with ``message``, keeping the partial ``result``."""
        super().__init__(message)
        self.result: dict[str, JsonValue] = dict(result or {})


class InvalidInputError(ValueError):
    """The request breaks a rule of the runtime or of a mixin; it is not run."""


class CircuitOpenError(RuntimeError):
    """Raised instead of calling a handler while its circuit is open."""
