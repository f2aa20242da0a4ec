"""Input of the fixture node."""

from omninode_runtime import ModelNodeInput

from ..enums import EnumFixtureWriterOperationType


class ModelFixtureWriterInput(ModelNodeInput):
    """One request for the node."""

    operation: EnumFixtureWriterOperationType
