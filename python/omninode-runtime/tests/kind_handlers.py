"""Handlers the tests route to from contracts they write on the fly."""

import asyncio

from pydantic import JsonValue

from omninode_runtime import HandlerContext, ModelNodeInput
from omninode_runtime.defaults import compute, effect, orchestrator, reducer

CALLS: list[str] = []


async def transform(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Compute default."""
    CALLS.append(context.operation)
    return compute.transform(request, context)


async def fold(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Reducer default: fold."""
    return reducer.fold(request, context)


async def read_state(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Reducer default: read."""
    return reducer.read_state(request, context)


async def reset_state(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Reducer default: reset."""
    return reducer.reset_state(request, context)


async def step(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Orchestrator default step."""
    return orchestrator.step(request, context)


async def write(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Effect default write."""
    return effect.write_record(request, context)


async def explode(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Always fails."""
    raise RuntimeError("step exploded")


async def dawdle(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Takes far too long."""
    await asyncio.sleep(5)
    return {}


async def not_a_dict(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Breaks the handler contract by returning a list."""
    result: object = ["not", "a", "dict"]
    return result  # type: ignore[return-value]


def not_async(request: ModelNodeInput, context: HandlerContext) -> dict[str, JsonValue]:
    """A plain function: the runtime must refuse it at start-up."""
    return {}


async def undo(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Records which step it compensates (a local compensation)."""
    CALLS.append(f"{context.operation}:{request.payload.get('compensating')}")
    return {"undone": request.payload.get("compensating")}
