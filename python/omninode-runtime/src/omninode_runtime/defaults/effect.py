"""Effect defaults: in-memory stand-ins for a database and a message channel."""

from pydantic import JsonValue

from ..context import HandlerContext
from ..models import ModelNodeInput

KEY_FIELDS = ("id", "key", "record_id")


def record_key(request: ModelNodeInput) -> str:
    """The targeted record: payload ``id``, ``key`` or ``record_id``, else the request's
    correlation id."""
    for name in KEY_FIELDS:
        value = request.payload.get(name)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return str(request.correlation_id)


def write_record(
    request: ModelNodeInput, context: HandlerContext, merge: bool = False
) -> dict[str, JsonValue]:
    """Store the payload as a record (its keys over the existing ones if ``merge``)."""
    key = record_key(request)
    created, evicted = context.records.put(key, request.payload, merge=merge)
    stored = context.records.get(key) or {}
    fields: list[JsonValue] = [*sorted(stored)]
    return {
        "action": "update" if merge else "write",
        "key": key,
        "created": created,
        "fields": fields,
        "evicted": evicted,
        "sequence": context.sequence.next(),
    }


def delete_record(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Delete the targeted record; deleting a missing record is not an error."""
    key = record_key(request)
    return {
        "action": "delete",
        "key": key,
        "deleted": context.records.delete(key),
        "sequence": context.sequence.next(),
    }


def read_record(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Read the targeted record (``found`` is False when it does not exist)."""
    key = record_key(request)
    record = context.records.get(key)
    return {"action": "read", "key": key, "found": record is not None, "record": record}


def send_message(
    request: ModelNodeInput, context: HandlerContext
) -> dict[str, JsonValue]:
    """Put a message with the payload in the outbox (what would have been sent)."""
    sequence = context.sequence.next()
    message_id = str(request.correlation_id)
    context.outbox.append(
        {
            "message_id": message_id,
            "operation": context.operation,
            "payload": request.payload,
            "sequence": sequence,
        }
    )
    return {
        "action": "send",
        "message_id": message_id,
        "queued": True,
        "outbox_size": len(context.outbox),
        "sequence": sequence,
    }
