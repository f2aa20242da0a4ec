"""A tiny effect node in the shape omninode-operator generates, for the tests."""

__version__ = "1.2.3"
