"""`make demo`: the real job on embedded defaults.

Starts a throwaway MariaDB loaded with sql/database_setup.sql and the local Iterable
sandbox on loopback, runs `python main.py` against them as a SELECT-only user, then
shows what the sandbox received. Everything it starts is stopped again on exit.

The job gets the demo's own settings file (demo-output/demo.env) and none of the
caller's environment variables, so the project's `.env` (a real API key, a
HEALTHCHECK_URL, a METRICS_FILE) is never read.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from devtools.job_env import clean_environment, write_env_file
from devtools.mariadb_server import Database, ThrowawayMariaDB
from sandbox import DEFAULT_API_KEY, SandboxServer
from sync_state import RESULTS_FILES

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "demo-output"
DATABASE = "iterable_demo"


def demo_settings(database: Database, base_url: str, output: Path = OUTPUT) -> dict[str, str]:
    return {
        "MYSQL_HOST": database.host,
        "MYSQL_PORT": str(database.port),
        "MYSQL_USER": database.user,
        "MYSQL_PASSWORD": database.password,
        "MYSQL_DATABASE": database.name,
        "ITERABLE_API_KEY": DEFAULT_API_KEY,
        "ITERABLE_BASE_URL": base_url,
        "CANDIDATE_NAME": "Demo Candidate",
        "RESULTS_DIR": str(output),
        "LOG_FILE": str(output / "iterable_integration.log"),
        "LOCK_FILE": str(output / "iterable_sync.lock"),
        "SYNC_STATE_PATH": str(output / "iterable_sync_state.sqlite3"),
    }


def job_invocation(
    settings: Mapping[str, str], output: Path = OUTPUT
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a demo run: its own settings file, nothing inherited."""
    env_file = write_env_file(output / "demo.env", settings)
    command = [sys.executable, str(ROOT / "main.py"), "--env-file", str(env_file)]
    return command, clean_environment()


def main() -> int:
    OUTPUT.mkdir(exist_ok=True)
    # Each demo starts from scratch, like a first run against a new Iterable project: no
    # state, and no results of an earlier demo (beside a new state, those would make the
    # job warn that its state was lost).
    for earlier in [OUTPUT / "iterable_sync_state.sqlite3", *OUTPUT.glob(RESULTS_FILES)]:
        earlier.unlink(missing_ok=True)
    password = secrets.token_hex(12)
    print("starting a throwaway MariaDB and the local Iterable sandbox ...", flush=True)
    with ThrowawayMariaDB() as server, SandboxServer(latency=0.02) as sandbox:
        server.create_database(DATABASE)
        server.load_sql_file(ROOT / "sql" / "database_setup.sql", DATABASE)
        database = server.create_user("iterable_sync", password, DATABASE)
        print(f"MariaDB on 127.0.0.1:{server.port}, sandbox at {sandbox.base_url}\n", flush=True)
        command, env = job_invocation(demo_settings(database, sandbox.base_url))
        first = "first run: the seed holds one malformed email, so expect exit code 1"
        code = run_job(command, env, first)
        print(
            f"the sandbox now holds {len(sandbox.users())} user profiles and "
            f"{len(sandbox.events())} page_view events\n"
        )
        calls = sandbox.stats()["total_requests"]
        again = run_job(
            command,
            env,
            "second run on unchanged data: nothing is resent, the malformed email is "
            "outstanding (exit code 0)",
        )
        print(f"API calls made by the second run: {sandbox.stats()['total_requests'] - calls}")
    return 0 if (code, again) == (1, 0) else 1


def run_job(command: list[str], env: dict[str, str], title: str) -> int:
    shown = " ".join(arg.removeprefix(f"{ROOT}/") for arg in command[1:])
    print(f"--- {title}\n$ python {shown}", flush=True)
    code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    print(f"exit code {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
