"""Test set-up: handler state is reset between tests."""

import pytest

import kind_handlers
from fixture_node.handlers import handler_call_flaky_service


@pytest.fixture(autouse=True)
def _reset_handler_state() -> None:
    kind_handlers.CALLS.clear()
    handler_call_flaky_service.ATTEMPTS.clear()
