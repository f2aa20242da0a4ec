"""Handler of the delete_record operation."""

from pydantic import JsonValue

from omninode_runtime import HandlerContext
from omninode_runtime.defaults import effect

from ..models import ModelFixtureWriterInput


async def handle_delete_record(
    request: ModelFixtureWriterInput,
    context: HandlerContext,
) -> dict[str, JsonValue]:
    """Handle the delete_record operation with the runtime's default."""
    return effect.delete_record(request, context)
