"""Output of the fixture node."""

from omninode_runtime import ModelNodeOutput

from ..enums import EnumFixtureWriterOperationType


class ModelFixtureWriterOutput(ModelNodeOutput):
    """Outcome of one request."""

    operation: EnumFixtureWriterOperationType
