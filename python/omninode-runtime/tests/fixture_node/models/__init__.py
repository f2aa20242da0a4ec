"""Models of the fixture node."""

from .model_fixture_writer_input import ModelFixtureWriterInput
from .model_fixture_writer_output import ModelFixtureWriterOutput

__all__ = ["ModelFixtureWriterInput", "ModelFixtureWriterOutput"]
