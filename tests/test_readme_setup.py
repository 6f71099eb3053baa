"""The README's "Using it for real" steps work as written, against a real server.

The statements of step 1 are read from the README itself and typed into the command-line
client from the project directory, as a person would; then `main.py --check` runs as the
read-only user they create, with a settings file made from .env.example (step 2) and
the README's sandbox settings. Only the database and user names are made unique.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import uuid

from devtools.job_env import clean_environment
from sandbox import DEFAULT_API_KEY
from tests.support.job import PROJECT_ROOT, Job

README = PROJECT_ROOT / "README.md"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"


def code_blocks(section: str, language: str) -> list[str]:
    """The fenced blocks of one `## ` section of the README, indentation removed."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0]
    fence = re.compile(rf"^( *)```{language}\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(match.group(2)) for match in fence.finditer(body)]


def sandbox_settings() -> dict[str, str]:
    """The .env lines the README gives for trying the job against the local sandbox."""
    for block in code_blocks("## Trying it without an Iterable account", "sh"):
        lines = [line for line in block.splitlines() if re.fullmatch(r"[A-Z_]+=\S*", line)]
        pairs = dict(line.split("=", 1) for line in lines)
        if "ITERABLE_API_KEY" in pairs:
            return pairs
    raise AssertionError("the README shows no sandbox settings")


def from_env_example(values: dict[str, str]) -> str:
    """.env.example with some variables filled in, as step 2 says."""
    lines = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values.pop(name)}" if name in values else line)
    assert values == {}, f"not in .env.example: {sorted(values)}"
    return "\n".join(lines) + "\n"


def test_the_setup_steps_work_as_written(mariadb, sandbox, tmp_path):
    (statements,) = code_blocks("## Using it for real", "sql")
    identified = re.search(r"IDENTIFIED BY '([^']*)'", statements)
    assert identified is not None, statements
    password = identified.group(1)
    database, user = f"readme_{uuid.uuid4().hex[:12]}", f"readme_{uuid.uuid4().hex[:12]}"
    ours = re.sub(r"\bproduct\b", database, statements)
    ours = re.sub(r"\biterable_sync\b", user, ours)
    assert ours.count(database) >= 3 and ours.count(user) >= 3, ours
    try:
        mariadb.run_client(ours, cwd=PROJECT_ROOT)
        grants = " ".join(row[0] for row in mariadb.execute(f"SHOW GRANTS FOR '{user}'@'%'"))
        assert re.findall(r"GRANT (\w+(?:, \w+)*) ON", grants) == ["USAGE", "SELECT", "SELECT"]

        sandbox_env = sandbox_settings()
        assert sandbox_env["ITERABLE_BASE_URL"] == "http://127.0.0.1:8080"
        env_file = tmp_path / "from-example.env"
        env_file.write_text(
            from_env_example(
                {
                    "MYSQL_HOST": mariadb.host,
                    "MYSQL_PORT": str(mariadb.port),
                    "MYSQL_USER": user,
                    "MYSQL_PASSWORD": password,
                    "MYSQL_DATABASE": database,
                    "ITERABLE_API_KEY": sandbox_env["ITERABLE_API_KEY"],
                    # the test's sandbox, on a free port rather than 8080
                    "ITERABLE_BASE_URL": sandbox.base_url,
                    "LOG_FILE": str(tmp_path / "sync.log"),
                    "RESULTS_DIR": str(tmp_path),
                    "LOCK_FILE": str(tmp_path / "sync.lock"),
                    "SYNC_STATE_PATH": str(tmp_path / "state.sqlite3"),
                }
            )
        )
        run = Job(tmp_path, clean_environment()).run("--check", "--env-file", str(env_file))
    finally:
        mariadb.drop_user(user)
        mariadb.drop_database(database)

    assert run.code == 0, run.stdout + run.stderr
    assert f"database: ok: connected to database {database} over TCP" in run.stdout
    assert "database: ok: Query 2 runs; first row: customer 1" in run.stdout
    assert f"iterable: ok: Iterable at {sandbox.base_url} accepts the key" in run.stdout


def test_the_readme_gives_the_key_the_sandbox_takes():
    assert sandbox_settings()["ITERABLE_API_KEY"] == DEFAULT_API_KEY


def test_bulk_seed_adds_a_synthetic_base_from_the_command_line(mariadb, seeded_db):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.bulk_seed",
            "--host",
            mariadb.host,
            "--port",
            str(mariadb.port),
            "--user",
            mariadb.user,
            "--password",
            mariadb.password,
            "--database",
            seeded_db.name,
            "--customers",
            "250",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "added 250 pro customers" in done.stdout
    conn = mariadb.connect(seeded_db.name)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT COUNT(*) FROM customers WHERE email LIKE 'bulk.%'")
        assert cursor.fetchone()[0] == 250
    finally:
        conn.close()
