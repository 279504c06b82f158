"""Fixtures for the tb.worker tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def pipes() -> Iterator[list[int]]:
    """A list to append fds to: those still open at the end of the test are closed."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
