"""Reducer defaults: fold into, read or reset the node's ``ReducerState``."""

from pydantic import JsonValue

from ..context import HandlerContext
from ..models import ModelNodeInput


def fold(request: ModelNodeInput, context: HandlerContext) -> dict[str, JsonValue]:
    """Fold the payload in (counts, numeric totals, merged object), once per id."""
    folded = context.state.fold(
        str(request.correlation_id), context.operation, request.payload
    )
    return {
        "reduced": folded,
        "duplicate": not folded,
        "state": context.state.snapshot(),
    }


def read_state(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """The accumulated state, unchanged."""
    return {"reduced": False, "duplicate": False, "state": context.state.snapshot()}


def reset_state(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Forget the accumulated state (the duplicate filter is kept)."""
    context.state.reset()
    return {"reduced": False, "reset": True, "state": context.state.snapshot()}
