"""Handler of the send_notification operation."""

from pydantic import JsonValue

from omninode_runtime import HandlerContext
from omninode_runtime.defaults import effect

from ..models import ModelFixtureWriterInput


async def handle_send_notification(
    request: ModelFixtureWriterInput,
    context: HandlerContext,
) -> dict[str, JsonValue]:
    """Handle the send_notification operation with the runtime's default."""
    return effect.send_message(request, context)
