"""JSON helpers shared by the runtime, its mixins and the default behaviours."""

import copy
import json

from pydantic import JsonValue


def canonical_json(value: JsonValue) -> str:
    """Serialise ``value`` deterministically, so equal data gives equal text.

    Used for cache keys, digests and size limits, which must not depend on key
    order; NaN and infinities are refused because JSON has no spelling for them.
    """
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def json_size(value: JsonValue) -> int:
    """Bytes of the canonical UTF-8 JSON of ``value`` (ValueError when not JSON)."""
    try:
        return len(canonical_json(value).encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"payload must be finite JSON: {exc}") from exc


def numeric_leaves(value: JsonValue, path: str = "") -> list[tuple[str, float]]:
    """Every number in ``value`` (booleans excluded) with its dotted path."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, int | float):
        return [(path or "value", float(value))]
    leaves: list[tuple[str, float]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            leaves += numeric_leaves(item, f"{path}.{key}" if path else key)
    else:
        for index, item in enumerate(value):
            leaves += numeric_leaves(item, f"{path}[{index}]")
    return leaves


def deep_merge(target: dict[str, JsonValue], update: dict[str, JsonValue]) -> None:
    """Merge ``update`` into ``target``: objects recursively, other values replaced."""
    for key, value in update.items():
        current = target.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            deep_merge(current, value)
        else:
            target[key] = copy.deepcopy(value)
