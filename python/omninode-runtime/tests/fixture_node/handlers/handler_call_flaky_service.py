"""Handler that fails ``payload["fail_times"]`` times per correlation id first."""

from pydantic import JsonValue

from omninode_runtime import HandlerContext

from ..models import ModelFixtureWriterInput

ATTEMPTS: dict[str, int] = {}


async def handle_call_flaky_service(
    request: ModelFixtureWriterInput,
    context: HandlerContext,
) -> dict[str, JsonValue]:
    """Raise ConnectionError (transient) until the attempt budget is used up."""
    key = str(request.correlation_id)
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    fail_times = request.payload.get("fail_times", 0)
    if isinstance(fail_times, int) and ATTEMPTS[key] <= fail_times:
        raise ConnectionError(f"service unavailable (attempt {ATTEMPTS[key]})")
    return {"attempts": ATTEMPTS[key]}
