"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings
from postgres_server import server

# Timing is measured by the benchmarks, never asserted by the tests: a property test that
# is slow once because the machine is busy (a GC pause, a server test beside it) is not a
# failure. A failure prints the blob that replays it (`@reproduce_failure`).
settings.register_profile("dispatchlet", deadline=None, print_blob=True)
settings.load_profile("dispatchlet")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the whole run (see postgres_server.py)."""
    with server() as url:
        yield url
