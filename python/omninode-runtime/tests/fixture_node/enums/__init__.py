"""Enums of the fixture node."""

from .enum_fixture_writer_operation_type import EnumFixtureWriterOperationType

__all__ = ["EnumFixtureWriterOperationType"]
