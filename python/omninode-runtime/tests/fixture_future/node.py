"""A declarative node; its contract asks for runtime >=0.2.0,<0.3.0."""

from omninode_runtime import NodeEffect


class NodeFutureEffect(NodeEffect):
    """Never runs on runtime 0.1.x."""
