"""Handler of the update_record operation."""

from pydantic import JsonValue

from omninode_runtime import HandlerContext
from omninode_runtime.defaults import effect

from ..models import ModelFixtureWriterInput


async def handle_update_record(
    request: ModelFixtureWriterInput,
    context: HandlerContext,
) -> dict[str, JsonValue]:
    """Handle the update_record operation with the runtime's default."""
    return effect.write_record(request, context, merge=True)
