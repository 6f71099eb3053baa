"""The job as cron runs it: main.py in a subprocess, apart from the user's own setup."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.job_env import clean_environment, write_env_file
from devtools.mariadb_server import Database
from sandbox import DEFAULT_API_KEY

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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

    def command(self, *args: str) -> list[str]:
        main = [sys.executable, str(self.project / "main.py")]
        if args[:1] == ("report",):  # reads no settings
            return [*main, *args]
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
