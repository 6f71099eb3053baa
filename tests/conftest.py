"""Shared pytest fixtures: a MySQL/MariaDB server and per-test seeded databases."""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# tests/ is not a package, so pytest only puts tests/ itself on sys.path.
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from devtools.mariadb_server import (  # noqa: E402
    DEFAULT_APP_TABLES,
    INSTALL_HINT,
    Database,
    ServerHandle,
    ThrowawayMariaDB,
    server_binaries_available,
)

SETUP_SQL = PROJECT_ROOT / "sql" / "database_setup.sql"


def _external_server() -> ServerHandle | None:
    """The server named by TEST_MYSQL_HOST/PORT/USER/PASSWORD, if TEST_MYSQL_HOST is set."""
    host = os.environ.get("TEST_MYSQL_HOST")
    if not host:
        return None
    return ServerHandle(
        host=host,
        port=int(os.environ.get("TEST_MYSQL_PORT", "3306")),
        user=os.environ.get("TEST_MYSQL_USER", "root"),
        password=os.environ.get("TEST_MYSQL_PASSWORD", ""),
    )


@pytest.fixture(scope="session")
def mariadb() -> Iterator[ServerHandle]:
    """Admin handle (host, port, user, password, execute, load_sql_file, ...) for the run."""
    external = _external_server()
    if external is not None:
        yield external
        return
    if not server_binaries_available():
        message = f"MariaDB binaries not found: {INSTALL_HINT}, or set TEST_MYSQL_HOST"
        # Locally a missing server is a skip; in CI it must not silently pass.
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with ThrowawayMariaDB() as server:
        yield server.admin


@pytest.fixture
def seeded_db(mariadb: ServerHandle) -> Iterator[Database]:
    """A fresh, uniquely named database loaded from sql/database_setup.sql; dropped after."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    database = mariadb.create_database(name)
    try:
        mariadb.load_sql_file(SETUP_SQL, name)
        yield database
    finally:
        mariadb.drop_database(name)


AppUserFactory = Callable[..., Database]


@pytest.fixture
def app_user(mariadb: ServerHandle) -> Iterator[AppUserFactory]:
    """Factory ``app_user(db, privileges="SELECT", tables=...)`` for least-privilege users."""
    created: list[str] = []

    def make(
        database: Database,
        privileges: str = "SELECT",
        tables: Sequence[str] = DEFAULT_APP_TABLES,
    ) -> Database:
        name = f"app_{uuid.uuid4().hex[:12]}"
        created.append(name)
        return mariadb.create_user(name, secrets.token_hex(12), database.name, privileges, tables)

    yield make
    for name in created:
        mariadb.drop_user(name)
