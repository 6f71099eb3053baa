"""`make demo`: the real job on embedded defaults.

Starts a throwaway MariaDB loaded with sql/database_setup.sql and the local Iterable
sandbox on loopback, runs `python main.py` against them as a SELECT-only user, then
shows what the sandbox received. Everything it starts is stopped again on exit.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from devtools.mariadb_server import ThrowawayMariaDB
from sandbox import DEFAULT_API_KEY, SandboxServer

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "demo-output"
DATABASE = "iterable_demo"


def demo_environment(host: str, port: int, password: str, base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TERM")}
    env.update(
        MYSQL_HOST=host,
        MYSQL_PORT=str(port),
        MYSQL_USER="iterable_sync",
        MYSQL_PASSWORD=password,
        MYSQL_DATABASE=DATABASE,
        ITERABLE_API_KEY=DEFAULT_API_KEY,
        ITERABLE_BASE_URL=base_url,
        CANDIDATE_NAME="Demo Candidate",
        RESULTS_DIR=str(OUTPUT),
        LOG_FILE=str(OUTPUT / "iterable_integration.log"),
        LOCK_FILE=str(OUTPUT / "iterable_sync.lock"),
        SYNC_STATE_PATH=str(OUTPUT / "iterable_sync_state.sqlite3"),
    )
    return env


def main() -> int:
    OUTPUT.mkdir(exist_ok=True)
    # Each demo starts from scratch, like a first run against a new Iterable project.
    (OUTPUT / "iterable_sync_state.sqlite3").unlink(missing_ok=True)
    password = secrets.token_hex(12)
    print("starting a throwaway MariaDB and the local Iterable sandbox ...", flush=True)
    with ThrowawayMariaDB() as server, SandboxServer(latency=0.02) as sandbox:
        server.create_database(DATABASE)
        server.load_sql_file(ROOT / "sql" / "database_setup.sql", DATABASE)
        server.create_user("iterable_sync", password, DATABASE)
        print(f"MariaDB on 127.0.0.1:{server.port}, sandbox at {sandbox.base_url}\n", flush=True)
        env = demo_environment(server.host, server.port, password, sandbox.base_url)
        code = run_job(env, "first run: the seed holds one malformed email, so expect exit code 1")
        print(
            f"the sandbox now holds {len(sandbox.users())} user profiles and "
            f"{len(sandbox.events())} page_view events\n"
        )
        calls = sandbox.stats()["total_requests"]
        again = run_job(
            env,
            "second run on unchanged data: nothing is resent, the malformed email is "
            "outstanding (exit code 0)",
        )
        print(f"API calls made by the second run: {sandbox.stats()['total_requests'] - calls}")
    return 0 if (code, again) == (1, 0) else 1


def run_job(env: dict[str, str], title: str) -> int:
    print(f"--- {title}\n$ python main.py", flush=True)
    command = [sys.executable, str(ROOT / "main.py")]
    code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    print(f"exit code {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
