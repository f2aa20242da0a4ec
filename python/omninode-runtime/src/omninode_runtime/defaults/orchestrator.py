"""Orchestrator default: a workflow step that records what it received."""

import hashlib

from pydantic import JsonValue

from .._json import canonical_json
from ..context import HandlerContext
from ..models import ModelNodeInput


def step(request: ModelNodeInput, context: HandlerContext) -> dict[str, JsonValue]:
    """Stand in for a step's real work (usually a call to a sibling node).

    Returns the step's position and what it saw: the payload's keys, the
    earlier steps, and a digest of both, so a run is reproducible and visible.
    """
    name = context.step or context.operation
    payload_keys: list[JsonValue] = [*sorted(request.payload)]
    previous_steps: list[JsonValue] = [*context.step_outputs]
    fingerprint = canonical_json(
        {"step": name, "payload": request.payload, "context": context.step_outputs}
    )
    position = context.workflow.index(name) + 1 if name in context.workflow else 0
    return {
        "step": name,
        "position": position,
        "payload_keys": payload_keys,
        "previous_steps": previous_steps,
        "digest": hashlib.sha256(fingerprint.encode("utf-8")).hexdigest(),
    }
