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
from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER  # noqa: E402
from tests.support.prerequisites import prerequisite_missing  # noqa: E402

SETUP_SQL = PROJECT_ROOT / "sql" / "database_setup.sql"


def _external_server() -> ServerHandle | None:
    """The server named by TEST_MYSQL_HOST/PORT/USER/PASSWORD, if TEST_MYSQL_HOST is set.

    TEST_MYSQL_UNIX_SOCKET names its socket, for the tests that connect through one.
    """
    host = os.environ.get("TEST_MYSQL_HOST")
    if not host:
        return None
    return ServerHandle(
        host=host,
        port=int(os.environ.get("TEST_MYSQL_PORT", "3306")),
        user=os.environ.get("TEST_MYSQL_USER", "root"),
        password=os.environ.get("TEST_MYSQL_PASSWORD", ""),
        unix_socket=os.environ.get("TEST_MYSQL_UNIX_SOCKET") or None,
    )


@pytest.fixture(scope="session")
def mariadb() -> Iterator[ServerHandle]:
    """Admin handle (host, port, user, password, execute, load_sql_file, ...) for the run."""
    external = _external_server()
    if external is not None:
        yield external
        return
    if not server_binaries_available():
        prerequisite_missing(f"MariaDB binaries not found: {INSTALL_HINT}, or set TEST_MYSQL_HOST")
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
    """Factory ``app_user(db, privileges="SELECT", tables=..., password=...)`` for
    least-privilege users (a random password unless one is given)."""
    created: list[str] = []

    def make(
        database: Database,
        privileges: str = "SELECT",
        tables: Sequence[str] = DEFAULT_APP_TABLES,
        password: str | None = None,
    ) -> Database:
        name = f"app_{uuid.uuid4().hex[:12]}"
        created.append(name)
        password = secrets.token_hex(12) if password is None else password
        return mariadb.create_user(name, password, database.name, privileges, tables)

    yield make
    for name in created:
        mariadb.drop_user(name)


# -- the local Iterable sandbox and the job as a user runs it ------------------------------

from sandbox import DEFAULT_API_KEY, SandboxServer  # noqa: E402
from tests.support.job import Job, job_environment  # noqa: E402

API_KEY = DEFAULT_API_KEY


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(latency=0.0) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxServer]:
    """The session's sandbox, emptied and reconfigured to its defaults for each test."""
    sandbox_server.reset()
    sandbox_server.configure(
        {
            "latency": 0.0,
            "rate_limits": None,
            "retry_after": None,
            "api_keys": [API_KEY],
            "disabled_keys": [],
            "forbidden_keys": [],
            "project_type": "hybrid",
            "max_bulk_items": None,
            "batch_too_large_status": 400,
        }
    )
    yield sandbox_server
    sandbox_server.clear_faults()


@pytest.fixture
def state_store(request: pytest.FixtureRequest) -> str:
    """The store the job keeps its state in: sqlite unless a test asks for both
    (tests.support.job.BOTH_STORES)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def job(
    seeded_db: Database,
    app_user: AppUserFactory,
    sandbox: SandboxServer,
    tmp_path: Path,
    mariadb: ServerHandle,
    state_store: str,
) -> Iterator[Job]:
    """main.py as a SELECT-only user against a freshly seeded database and an empty sandbox;
    with the MySQL store, its state in a database of its own, on which it may do anything."""
    user = app_user(seeded_db)
    job = Job(tmp_path, job_environment(user, sandbox.base_url, tmp_path))
    if state_store != "mysql":
        yield job
        return
    name = f"state_{uuid.uuid4().hex[:12]}"
    job.use_mysql_state(mariadb.create_database(name))
    mariadb.execute(f"GRANT ALL ON `{name}`.* TO '{user.user}'@'%'")
    try:
        yield job
    finally:
        mariadb.drop_database(name)


@pytest.fixture
def clean_seed(mariadb: ServerHandle, seeded_db: Database) -> Database:
    """The seed without its malformed email, so a run that goes well exits 0."""
    mariadb.execute(
        "UPDATE customers SET email = 'eight@example.com' WHERE id = %s",
        (SEED_MALFORMED_EMAIL_CUSTOMER,),
        database=seeded_db.name,
    )
    return seeded_db
