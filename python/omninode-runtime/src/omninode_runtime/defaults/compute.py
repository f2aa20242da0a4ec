"""Compute default: a pure, deterministic transform of the payload."""

import hashlib
import math
import statistics

from pydantic import JsonValue

from .._json import canonical_json, numeric_leaves
from ..context import HandlerContext
from ..models import ModelNodeInput


def normalize_key(key: str) -> str:
    """``" Customer-Name "`` -> ``"customer_name"`` (lower snake case)."""
    cleaned = "".join(char if char.isalnum() else "_" for char in key.strip().lower())
    return "_".join(part for part in cleaned.split("_") if part) or "_"


def normalize_value(value: JsonValue) -> JsonValue:
    """Normalise keys, sort objects by key and collapse whitespace in strings."""
    if isinstance(value, dict):
        normalized = {
            normalize_key(key): normalize_value(item) for key, item in value.items()
        }
        return dict(sorted(normalized.items()))
    if isinstance(value, list):
        return [normalize_value(item) for item in value]
    if isinstance(value, str):
        return " ".join(value.split())
    return value


def stable_digest(value: JsonValue) -> str:
    """SHA-256 of the canonical JSON of ``value`` (independent of key order)."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def summary_statistics(numbers: list[float]) -> dict[str, JsonValue]:
    """Count, sum, minimum, maximum, mean and median of ``numbers``."""
    if not numbers:
        return {
            "count": 0,
            "sum": 0.0,
            "min": None,
            "max": None,
            "mean": None,
            "median": None,
        }
    return {
        "count": len(numbers),
        "sum": math.fsum(numbers),
        "min": min(numbers),
        "max": max(numbers),
        "mean": statistics.fmean(numbers),
        "median": statistics.median(numbers),
    }


def transform(request: ModelNodeInput, context: HandlerContext) -> dict[str, JsonValue]:
    """Normalised payload, its digest and statistics of its numbers.

    Pure: the same payload always gives the same result, whatever its key
    order, so results are safe to cache.
    """
    normalized = normalize_value(request.payload)
    leaves = numeric_leaves(request.payload)
    return {
        "operation": context.operation,
        "normalized": normalized,
        "digest": stable_digest(normalized),
        "numeric_fields": len(leaves),
        "statistics": summary_statistics([number for _, number in leaves]),
    }
