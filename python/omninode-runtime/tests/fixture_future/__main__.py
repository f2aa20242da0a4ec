"""Start the node: it must refuse, this runtime is too old for its contract."""

from omninode_runtime.cli import main

from .node import NodeFutureEffect

raise SystemExit(main(NodeFutureEffect))
