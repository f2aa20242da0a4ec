"""Prometheus text exposition (format 0.0.4) of a node's counters.

Hand-written because it is small and the runtime should not need a metrics
library; the metric names (``onex_node_*``) are those nodes exposed before the
runtime existed, so dashboards keep working.
"""

from collections.abc import Iterable, Mapping, Sequence

OUTCOMES = ("success", "invalid", "error")
UNKNOWN_OPERATION = "unknown"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_LATENCY_BUCKETS_S = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_labels(labels: Mapping[str, str]) -> str:
    """``{a="1",b="2"}`` for ``labels`` (the empty string for none)."""
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def metric_family(
    name: str,
    kind: str,
    help_text: str,
    samples: Iterable[tuple[str, Mapping[str, str], float]],
) -> list[str]:
    """HELP and TYPE lines, then one line per ``(suffix, labels, value)``."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for suffix, labels, value in samples:
        rendered = (
            f"{value:.6f}".rstrip("0").rstrip(".") if value % 1 else str(int(value))
        )
        lines.append(f"{name}{suffix}{prometheus_labels(labels)} {rendered}")
    return lines


class RequestMetrics:
    """Requests by operation and outcome, and their total duration."""

    def __init__(self, operations: Sequence[str]) -> None:
        """Pre-create a zero series for every operation, so rates start at 0."""
        self._operations = tuple(operations)
        self._counts: dict[tuple[str, str], int] = {}
        self._durations: dict[str, tuple[int, float]] = {}

    def record(self, operation: str, outcome: str, seconds: float) -> None:
        """Count one request of ``operation`` that ended with ``outcome``."""
        if operation not in self._operations:
            operation = UNKNOWN_OPERATION
        key = (operation, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1
        count, total = self._durations.get(operation, (0, 0.0))
        self._durations[operation] = (count + 1, total + seconds)

    def totals(self) -> tuple[int, int]:
        """``(all requests, failed or invalid requests)``."""
        total = sum(self._counts.values())
        ok = sum(n for (_, outcome), n in self._counts.items() if outcome == "success")
        return total, total - ok

    def render(self, base: Mapping[str, str]) -> list[str]:
        """The request counter and duration summary families."""
        operations = list(self._operations)
        if any(op == UNKNOWN_OPERATION for op, _ in self._counts):
            operations.append(UNKNOWN_OPERATION)
        counts = [
            (
                "",
                {**base, "operation": op, "outcome": outcome},
                self._counts.get((op, outcome), 0),
            )
            for op in operations
            for outcome in OUTCOMES
        ]
        durations: list[tuple[str, Mapping[str, str], float]] = []
        for op in operations:
            count, total = self._durations.get(op, (0, 0.0))
            labels = {**base, "operation": op}
            durations += [("_sum", labels, total), ("_count", labels, count)]
        return metric_family(
            "onex_node_requests_total",
            "counter",
            "Requests processed, by outcome.",
            counts,
        ) + metric_family(
            "onex_node_request_duration_seconds",
            "summary",
            "Time spent processing requests.",
            durations,
        )


class LatencyHistogram:
    """Cumulative latency buckets per operation (``MixinMetrics``)."""

    def __init__(self, buckets_s: Sequence[float] = DEFAULT_LATENCY_BUCKETS_S) -> None:
        """Use ``buckets_s`` (upper bounds in seconds) for every operation."""
        self._bounds = tuple(sorted(buckets_s))
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, operation: str, seconds: float) -> None:
        """Record one request of ``operation`` that took ``seconds``."""
        counts = self._counts.setdefault(operation, [0] * (len(self._bounds) + 1))
        for index, bound in enumerate(self._bounds):
            if seconds <= bound:
                counts[index] += 1
        counts[-1] += 1
        self._sums[operation] = self._sums.get(operation, 0.0) + seconds

    def render(self, name: str, base: Mapping[str, str]) -> list[str]:
        """The histogram family ``name`` (``_bucket``, ``_sum``, ``_count``)."""
        samples: list[tuple[str, Mapping[str, str], float]] = []
        for operation, counts in sorted(self._counts.items()):
            series = {**base, "operation": operation}
            for bound, count in zip(self._bounds, counts, strict=False):
                samples.append(("_bucket", {**series, "le": f"{bound:g}"}, count))
            samples.append(("_bucket", {**series, "le": "+Inf"}, counts[-1]))
            samples.append(("_sum", series, self._sums[operation]))
            samples.append(("_count", series, counts[-1]))
        return metric_family(
            name, "histogram", "Request latency by operation.", samples
        )
