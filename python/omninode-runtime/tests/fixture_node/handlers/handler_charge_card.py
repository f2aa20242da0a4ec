"""Handler that fails on purpose, keeping a partial result."""

from pydantic import JsonValue

from omninode_runtime import HandlerContext, HandlerError

from ..models import ModelFixtureWriterInput


async def handle_charge_card(
    request: ModelFixtureWriterInput,
    context: HandlerContext,
) -> dict[str, JsonValue]:
    """Refuse amounts above 100 (HandlerError) and crash on negative ones."""
    amount = request.payload.get("amount", 0)
    if not isinstance(amount, int | float):
        raise TypeError("amount must be a number")
    if amount < 0:
        raise RuntimeError("negative amounts crash the card service")
    if amount > 100:
        raise HandlerError(
            "card declined", result={"authorised": False, "amount": amount}
        )
    context.log("card_charged", amount=amount)
    return {"authorised": True, "amount": amount}
