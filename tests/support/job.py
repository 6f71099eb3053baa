"""The job as cron runs it: main.py in a subprocess, apart from the user's own setup."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mysql.connector
import pytest

from devtools.job_env import clean_environment, write_env_file
from devtools.mariadb_server import Database
from sandbox import DEFAULT_API_KEY

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A test (or a module, as pytestmark) that runs once on each state store; the `job`
# fixture then keeps its state in a SQLite file, or in a MySQL database of its own.
STORES = ("sqlite", "mysql")
BOTH_STORES = pytest.mark.parametrize("state_store", STORES, indirect=True)


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
    """Runs main.py in a subprocess with a clean environment pointing at the test's parts.

    The settings come from the environment; the job also gets a settings file of its own
    (`--env-file`, empty), so a `.env` in the project directory is never read. A test's
    own `--env-file` comes later on the command line and wins.
    """

    def __init__(self, workdir: Path, env: dict[str, str], project: Path = PROJECT_ROOT) -> None:
        self.workdir = workdir
        self.env = env
        self.project = project
        self.results_dir = workdir / "results"
        self.results_dir.mkdir(exist_ok=True)
        self.env_file = write_env_file(workdir / "job.env", {})
        # The MySQL store's database (as the admin), None while the state is a file.
        self.state_database: Database | None = None

    def use_mysql_state(self, database: Database) -> None:
        self.state_database = database
        self.env.update(STATE_STORE="mysql", STATE_MYSQL_DATABASE=database.name)

    @property
    def state(self) -> Path | Database:
        """Where the state is, for the oracle: the file, or the MySQL database."""
        return self.state_database or self.state_file

    def sqlite_only(self) -> None:
        """Skip a test of the SQLite file itself (its upgrades) on the MySQL store."""
        if self.state_database is not None:
            pytest.skip("a test of the SQLite state file")

    def state_rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a query on the state, whichever store holds it."""
        return state_rows(self.state, sql)

    def command(self, *args: str) -> list[str]:
        main = [sys.executable, str(self.project / "main.py")]
        if args[:1] == ("report",):  # reads no settings
            return [*main, *args]
        if args[:1] == ("state",):  # a command, then its options
            return [*main, *args, "--env-file", str(self.env_file)]
        return [*main, "--env-file", str(self.env_file), *args]

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
    env = clean_environment()
    env.update(
        MYSQL_HOST=database.host,
        MYSQL_PORT=str(database.port),
        MYSQL_USER=database.user,
        MYSQL_PASSWORD=database.password,
        MYSQL_DATABASE=database.name,
        ITERABLE_API_KEY=DEFAULT_API_KEY,
        ITERABLE_BASE_URL=base_url,
        RESULTS_DIR=str(workdir / "results"),
        LOG_FILE=str(workdir / "sync.log"),
        LOCK_FILE=str(workdir / "sync.lock"),
        SYNC_STATE_PATH=str(workdir / "state.sqlite3"),
        REQUEST_TIMEOUT_SECONDS="2",
        PYTHONUNBUFFERED="1",
    )
    return env


def state_rows(state: Path | Database, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query on a state file (opened read-only) or a MySQL state database."""
    if isinstance(state, Path):
        db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    connection = mysql.connector.connect(**state.connect_args())
    try:
        cursor = connection.cursor()
        cursor.execute(sql)
        rows = [tuple(row) for row in cursor.fetchall()] if cursor.description else []
        connection.commit()
        return rows
    finally:
        connection.close()
