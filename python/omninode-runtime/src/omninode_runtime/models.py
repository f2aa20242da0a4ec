"""Base models of every node's input and output, and the runtime's settings.

A generated node subclasses the input and output models only to narrow
``operation`` to its own StrEnum; everything else is shared here so that all
nodes speak the same JSON.
"""

import os
import socket
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from .tracecontext import TRACEPARENT_ENV


class ModelNodeInput(BaseModel):
    """One request: an operation, its JSON payload and a correlation id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    operation: str = Field(description="Operation to perform (a contract handler).")
    correlation_id: UUID = Field(
        default_factory=uuid4,
        description="Ties the request to its output and to its events.",
    )
    payload: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Operation-specific JSON data.",
    )


class ModelNodeOutput(BaseModel):
    """Outcome of one request: the result on success, the error otherwise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    success: bool = Field(description="Whether the operation succeeded.")
    operation: str = Field(description="Operation that was requested.")
    correlation_id: UUID = Field(description="Correlation id of the request.")
    result: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Operation result (the partial result when it failed).",
    )
    error: str | None = Field(default=None, description="Why it failed, else None.")
    processing_time_ms: float = Field(
        default=0.0,
        ge=0.0,
        description="Time spent validating and processing, in milliseconds.",
    )


def _env_or(name: str, fallback: str) -> str:
    return os.environ.get(name) or fallback


class ModelNodeSettings(BaseModel):
    """How one node instance runs; the CLI fills it from its command line.

    The defaults suit tests and local runs: no event bus unless
    ``kafka_servers`` is given, bounded in-memory state everywhere.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: UUID | None = Field(
        default=None,
        description="Instance id; default: uuid5 of namespace, node name, replica.",
    )
    replica: str = Field(
        default_factory=lambda: _env_or("HOSTNAME", socket.gethostname()),
        min_length=1,
        description="Name of this replica (the pod name in Kubernetes).",
    )
    namespace: str = Field(
        default_factory=lambda: _env_or("POD_NAMESPACE", "default"),
        min_length=1,
        description="Kubernetes namespace, part of the stable node id.",
    )
    host: str = Field(default="0.0.0.0", description="Interface the server binds.")
    port: int = Field(default=8080, ge=0, le=65535, description="0: a free port.")
    advertised_host: str | None = Field(
        default=None,
        description="Host name others reach the node by; default: the host name.",
    )
    kafka_servers: str | None = Field(
        default=None, description="Kafka bootstrap servers; None: no broker."
    )
    skip_event_bus: bool = Field(default=False, description="Never use the bus.")
    traceparent: str | None = Field(
        default_factory=lambda: os.environ.get(TRACEPARENT_ENV) or None,
        description="W3C traceparent the node's start-up continues (the trace of "
        "the generation that produced it); default: $TRACEPARENT.",
    )
    consumer_group: str | None = Field(
        default=None,
        min_length=1,
        description="Consumer group of the command topic; default: the node's name.",
    )
    command_partitions: int = Field(
        default=6,
        ge=1,
        description="Partitions of the command topic when the node creates it "
        "(replicas share the commands of different partitions).",
    )
    kafka_timeout_s: float = Field(
        default=5.0, gt=0.0, description="Broker acknowledgement / admin timeout."
    )
    shutdown_timeout_s: float = Field(
        default=1.5, ge=0.0, description="Bounded flush of queued events on stop."
    )
    process_timeout_s: float = Field(
        default=60.0, gt=0.0, description="Longest HTTP /process call."
    )
    max_payload_bytes: int = Field(default=1_048_576, gt=0)
    max_records: int = Field(default=10_000, gt=0)
    max_outbox: int = Field(default=1_000, gt=0)
    idempotency_window: int = Field(
        default=10_000, gt=0, description="Correlation ids remembered for replays."
    )
    cache_max_entries: int = Field(default=256, gt=0)
    cache_ttl_s: float = Field(default=300.0, gt=0.0)
    retry_max_attempts: int = Field(default=3, ge=1)
    retry_base_delay_s: float = Field(default=0.05, ge=0.0)
    retry_max_delay_s: float = Field(default=1.0, ge=0.0)
    circuit_failure_threshold: int = Field(default=5, ge=1)
    circuit_recovery_s: float = Field(default=30.0, gt=0.0)
    max_payload_depth: int = Field(default=32, ge=1)
    max_payload_items: int = Field(default=10_000, ge=1)
    max_key_length: int = Field(default=256, ge=1)
    performance: dict[str, float] = Field(
        default_factory=dict,
        description="Overrides of the contract's performance values.",
    )
