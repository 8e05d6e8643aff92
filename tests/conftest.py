"""
Fixtures for every test folder: a real, throwaway PostgreSQL server for the
session (C{postgres_server}) and a fresh empty database on it per test
(C{postgres_url}).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from slaveapi.testing import ThrowawayPostgres

_INSTALL_HINT = "install Debian's postgresql (sudo apt-get install postgresql, or run scripts/ensure-system-packages)"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayPostgres]:
    """
    A PostgreSQL server for the session, stopped at its end. Skipped when
    PostgreSQL is not installed, except in CI (C{CI=true}), where that fails.
    """
    # Imported here: slaveapi.testing brings in conch, which installs the
    # default reactor, and this module is loaded before pytest-twisted
    # installs the asyncio one.
    from slaveapi.testing import ThrowawayPostgres, find_postgres_bin

    if find_postgres_bin() is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL server binaries are missing: {_INSTALL_HINT}")
        pytest.skip(f"PostgreSQL server binaries are missing: {_INSTALL_HINT}")
    server = ThrowawayPostgres.start(str(tmp_path_factory.mktemp("postgres")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _postgres_database_numbers() -> Iterator[int]:
    return itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: ThrowawayPostgres, _postgres_database_numbers: Iterator[int]) -> str:
    """The URL of a fresh, empty database on the session's server, for this test alone."""
    return postgres_server.create_database(f"t{next(_postgres_database_numbers)}")
