"""Start the fixture node: ``python -m fixture_node --port 0``."""

from omninode_runtime.cli import main

from .node import NodeFixtureWriterEffect

raise SystemExit(main(NodeFixtureWriterEffect))
