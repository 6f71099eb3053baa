"""Where the job looks for its files, and what the demo and the tests keep out.

Relative paths in settings, and `.env` itself, are relative to the project directory
(where main.py is): a run from cron in another working directory uses the same state,
lock and results as a run from the project directory. The demo and the tests run the
job with a settings file of their own and a bare environment, so a `.env` in the project
directory (the user's real one) never reaches them. Each test runs main.py from a copy
of the product in a temporary directory, never from the checkout itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import demo
from devtools.job_env import PASSED_THROUGH, clean_environment, write_env_file
from tests.support.job import PROJECT_ROOT, Job, job_environment


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the product: the root modules and sql/."""
    copy = tmp_path / "project"
    copy.mkdir()
    for module in PROJECT_ROOT.glob("*.py"):
        shutil.copy2(module, copy)
    shutil.copytree(PROJECT_ROOT / "sql", copy / "sql")
    return copy


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    return directory


def run_main(
    project: Path, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(project / "main.py"), *args],
        cwd=cwd,
        env=clean_environment() if env is None else env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def connection(database, base_url: str) -> dict[str, str]:
    """The MYSQL_* and ITERABLE_* settings the tests' job gets, for a .env of our own."""
    env = job_environment(database, base_url, Path("unused"))
    return {k: v for k, v in env.items() if k.startswith(("MYSQL_", "ITERABLE_"))}


def test_runs_from_any_directory_use_the_projects_files(
    project, elsewhere, seeded_db, app_user, sandbox
):
    (project / "results").mkdir()
    (project / "state").mkdir()
    relative = {
        "RESULTS_DIR": "results",
        "LOG_FILE": "sync.log",
        "LOCK_FILE": "sync.lock",
        "SYNC_STATE_PATH": "state/sync.sqlite3",
        "METRICS_FILE": "metrics.prom",
    }
    write_env_file(
        project / ".env", {**connection(app_user(seeded_db), sandbox.base_url), **relative}
    )

    first = run_main(project, project)
    assert first.returncode == 1, first.stderr  # the seed's malformed email
    calls = sandbox.stats()["total_requests"]
    # As cron would: another working directory, main.py by its full path.
    second = run_main(project, elsewhere)
    assert second.returncode == 0, second.stderr
    # The same state: nothing resent, the malformed email outstanding.
    assert "7 users: 0 succeeded, 1 failed, 6 skipped" in second.stdout
    assert sandbox.stats()["total_requests"] == calls

    assert len(list((project / "results").glob("integration_results_*.json"))) == 2
    for name in ("sync.log", "sync.lock", "state/sync.sqlite3", "metrics.prom"):
        assert (project / name).is_file(), name
    assert list(elsewhere.iterdir()) == []


def test_without_settings_the_error_names_the_env_file_beside_main_py(project, elsewhere):
    run = run_main(project, elsewhere)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "error: configuration: MYSQL_USER is not set; MYSQL_DATABASE is not set; "
        f"ITERABLE_API_KEY is not set; no settings file at {project / '.env'} "
        "(copy .env.example there, or name one with --env-file)"
    )


def test_env_file_on_the_command_line_is_relative_to_the_working_directory(
    project, elsewhere, seeded_db, app_user, sandbox
):
    write_env_file(project / ".env", {"PLAN_TYPE": "no-such-plan"})
    settings = {**connection(app_user(seeded_db), sandbox.base_url), "RESULTS_DIR": str(elsewhere)}
    write_env_file(elsewhere / "mine.env", settings)
    run = run_main(project, elsewhere, "--env-file", "mine.env", "--dry-run")
    assert run.returncode == 1, run.stderr
    assert "7 users" in run.stdout  # mine.env's settings, not the project's .env


# -- the project's .env stays out of the tests and the demo --------------------------------


@pytest.fixture
def poisoned(project, tmp_path) -> Path:
    """A project .env such as a user's: another plan, and a metrics file of their own.

    Returns the metrics file, which exists only if some run read that .env.
    """
    metrics = tmp_path / "users-metrics.prom"
    write_env_file(project / ".env", {"PLAN_TYPE": "no-such-plan", "METRICS_FILE": str(metrics)})
    return metrics


def test_the_tests_job_never_reads_the_projects_env(
    project, poisoned, tmp_path, seeded_db, app_user, sandbox
):
    workdir = tmp_path / "job"
    workdir.mkdir()
    env = job_environment(app_user(seeded_db), sandbox.base_url, workdir)
    # The poisoned .env is live: main.py run the ordinary way reads it.
    (workdir / "results").mkdir()
    ordinary = run_main(project, workdir, env=env)
    assert ordinary.returncode == 0 and "0 users" in ordinary.stdout, ordinary.stderr
    assert poisoned.exists()
    poisoned.unlink()

    run = Job(workdir, env, project=project).run()

    assert run.code == 1, run.stderr
    assert run.results["summary"]["total"] == 7
    assert not poisoned.exists()


def test_the_demo_runs_the_job_apart_from_the_users_setup(
    project, poisoned, tmp_path, seeded_db, app_user, sandbox, monkeypatch
):
    # ... and whoever runs `make demo` has monitoring and other settings exported.
    monkeypatch.setenv("PLAN_TYPE", "no-such-plan")
    monkeypatch.setenv("SYNC_MODE", "bulk")
    monkeypatch.setenv("METRICS_FILE", str(poisoned))
    monkeypatch.setenv("HEALTHCHECK_URL", "https://hc.example.com/ping/abc")
    output = tmp_path / "demo-output"
    output.mkdir()
    settings = demo.demo_settings(app_user(seeded_db), sandbox.base_url, output)
    command, env = demo.job_invocation(settings, output)
    assert set(env) <= set(PASSED_THROUGH)
    # The demo's own command, pointed at the copy whose .env is poisoned.
    assert command[1] == str(PROJECT_ROOT / "main.py")
    command[1] = str(project / "main.py")

    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)

    assert done.returncode == 1, done.stderr
    assert "7 users: 6 succeeded, 1 failed" in done.stdout
    (results,) = output.glob("integration_results_*.json")
    assert '"mode": "single"' in results.read_text()
    assert not poisoned.exists()
