"""The introspection event: how a node announces itself to the ONEX registry.

The registry validates the payload as omnibase_infra's
``ModelNodeIntrospectionEvent``, which forbids extra fields: this module
writes exactly the fields listed there and nothing else.
"""

import socket
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from uuid import UUID

from pydantic import JsonValue

from .contract import EnumNodeKind, ModelContract, ModelSemVer


class EnumIntrospectionReason(StrEnum):
    """Why an introspection event was sent (a subset of ONEX's reasons)."""

    STARTUP = "startup"
    HEARTBEAT = "heartbeat"
    SHUTDOWN = "shutdown"


def node_instance_id(namespace: str, node_name: str, replica: str) -> UUID:
    """A node id that survives restarts: uuid5 of the replica's URL-like name.

    A restarted pod keeps its name in a StatefulSet and gets a new one in a
    Deployment; either way the registry sees one id per running replica.
    """
    return uuid.uuid5(
        uuid.NAMESPACE_URL, f"omninode://{namespace}/{node_name}/{replica}"
    )


def advertised_base_url(host: str | None, port: int) -> str:
    """``http://host:port`` as other services should call this node."""
    if not host or host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def endpoints(base_url: str) -> dict[str, JsonValue]:
    """The node's HTTP endpoints by name (``health`` is the readiness probe)."""
    return {
        "health": f"{base_url}/health/ready",
        "metrics": f"{base_url}/metrics",
        "process": f"{base_url}/process",
    }


def topic_entries(topics: list[str], category: str) -> list[JsonValue]:
    """``ModelEventBusTopicEntry`` objects (category EVENT, COMMAND or INTENT)."""
    return [{"topic": topic, "message_category": category} for topic in topics]


def bus_and_capabilities(contract: ModelContract) -> dict[str, JsonValue]:
    """What the registry routes by: the node's topics, and its operations."""
    bus = contract.event_bus
    publish = list(
        dict.fromkeys([*bus.publish_topics, *filter(None, [contract.terminal_event])])
    )
    operations: list[JsonValue] = [*contract.operations]
    return {
        "event_bus": {
            "subscribe_topics": topic_entries(bus.subscribe_topics, "COMMAND"),
            "publish_topics": topic_entries(publish, "EVENT"),
        },
        "declared_capabilities": {"processing": True, "supported_types": operations},
    }


def introspection_payload(
    *,
    node_id: UUID,
    kind: EnumNodeKind,
    node_name: str,
    node_version: ModelSemVer,
    base_url: str,
    reason: EnumIntrospectionReason,
    contract: ModelContract | None = None,
) -> dict[str, JsonValue]:
    """The ``ModelNodeIntrospectionEvent`` payload (a fresh correlation id)."""
    return {
        "node_id": str(node_id),
        "node_type": kind.value,
        "correlation_id": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "node_name": node_name,
        "node_version": {
            "major": node_version.major,
            "minor": node_version.minor,
            "patch": node_version.patch,
        },
        "endpoints": endpoints(base_url),
        "reason": reason.value,
        **(bus_and_capabilities(contract) if contract is not None else {}),
    }
