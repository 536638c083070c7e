"""Fixtures shared by the ops tests."""

from __future__ import annotations

import pytest

from pointdr2 import ops


@pytest.fixture
def backend():
    """Run the test body under a given backend, restoring the default afterwards."""
    def use(name: str) -> None:
        ops.set_backend(name)

    yield use
    ops.set_backend(None)
