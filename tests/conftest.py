"""Shared pytest fixtures: a MySQL/MariaDB server and per-test seeded databases."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from tests.support.prerequisites import prerequisite_missing  # noqa: E402

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


# -- the local Iterable sandbox and the job as a user runs it ------------------------------

from sandbox import DEFAULT_API_KEY, SandboxServer  # noqa: E402

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


@dataclass
class JobRun:
    """One `python main.py` run as cron would see it: exit code, output, results file."""

    code: int
    stdout: str
    stderr: str
    results_path: Path | None

    @property
    def results(self) -> dict[str, Any]:
        assert self.results_path is not None, f"no results file; stderr: {self.stderr}"
        return json.loads(self.results_path.read_text(encoding="utf-8"))

    def by_customer(self) -> dict[int, dict[str, Any]]:
        return {row["customer_id"]: row for row in self.results["results"]}


class Job:
    """Runs main.py in a subprocess with a clean environment pointing at the test's parts."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.results_dir = workdir / "results"
        self.results_dir.mkdir(exist_ok=True)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, str(PROJECT_ROOT / "main.py"), *args]

    def environment(self, **overrides: str | None) -> dict[str, str]:
        env = {**self.env, **{k: v for k, v in overrides.items() if v is not None}}
        for name, value in overrides.items():
            if value is None:
                env.pop(name, None)
        return env

    def run(self, *args: str, timeout: float = 120, **overrides: str | None) -> JobRun:
        before = set(self.results_dir.glob("integration_results_*.json"))
        done = subprocess.run(
            self.command(*args),
            cwd=self.workdir,
            env=self.environment(**overrides),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        created = sorted(set(self.results_dir.glob("integration_results_*.json")) - before)
        return JobRun(done.returncode, done.stdout, done.stderr, created[-1] if created else None)

    def start(self, *args: str, **overrides: str | None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            cwd=self.workdir,
            env=self.environment(**overrides),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @property
    def log_file(self) -> Path:
        return self.workdir / "sync.log"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.sqlite3"


def job_environment(database: Database, base_url: str, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        MYSQL_HOST=database.host,
        MYSQL_PORT=str(database.port),
        MYSQL_USER=database.user,
        MYSQL_PASSWORD=database.password,
        MYSQL_DATABASE=database.name,
        ITERABLE_API_KEY=API_KEY,
        ITERABLE_BASE_URL=base_url,
        RESULTS_DIR=str(workdir / "results"),
        LOG_FILE=str(workdir / "sync.log"),
        LOCK_FILE=str(workdir / "sync.lock"),
        SYNC_STATE_PATH=str(workdir / "state.sqlite3"),
        REQUEST_TIMEOUT_SECONDS="2",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def job(
    seeded_db: Database, app_user: AppUserFactory, sandbox: SandboxServer, tmp_path: Path
) -> Job:
    """main.py as a SELECT-only user against a freshly seeded database and an empty sandbox."""
    return Job(tmp_path, job_environment(app_user(seeded_db), sandbox.base_url, tmp_path))
