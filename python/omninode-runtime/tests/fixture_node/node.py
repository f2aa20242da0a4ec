"""The fixture effect node: declarative, contract.yaml routes each operation."""

from omninode_runtime import NodeEffect

from .models import ModelFixtureWriterInput, ModelFixtureWriterOutput


class NodeFixtureWriterEffect(NodeEffect):
    """Writes, reads and deletes records; sends notifications."""

    input_model = ModelFixtureWriterInput
    output_model = ModelFixtureWriterOutput
