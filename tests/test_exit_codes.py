"""Exit codes and the one line a user sees for each expected failure: never a traceback."""

from __future__ import annotations

import fcntl
import os

import pytest

from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER


def last_line(run) -> str:
    return run.stderr.strip().splitlines()[-1]


def assert_clean_failure(run, code: int, message: str) -> None:
    assert run.code == code, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert last_line(run).startswith("error: ")
    assert message in last_line(run)


def test_zero_when_every_row_succeeds(job, mariadb, seeded_db):
    mariadb.execute(
        "UPDATE customers SET email = 'fixed@example.com' WHERE id = %s",
        (SEED_MALFORMED_EMAIL_CUSTOMER,),
        database=seeded_db.name,
    )
    run = job.run()
    assert run.code == 0, run.stderr
    assert run.results["summary"]["failed"] == 0


def test_zero_when_there_is_nothing_to_do(job, sandbox):
    run = job.run("--plan-type", "no-such-plan")
    assert run.code == 0
    assert run.results["summary"]["total"] == 0
    assert sandbox.stats()["total_requests"] == 0


def test_one_when_a_row_fails(job):
    assert job.run().code == 1


# Each rule has its own in-process case in test_settings.py and test_security.py; these
# two show how any of them reaches the user: exit 2 and one line, before anything is sent.
@pytest.mark.parametrize(
    ("args", "overrides", "message"),
    [
        (
            (),
            {"MYSQL_USER": None, "SYNC_MODE": "fast"},
            "MYSQL_USER is not set; SYNC_MODE must be one of single, bulk (got 'fast')",
        ),
        (("--turbo",), {}, "unrecognized arguments: --turbo"),
    ],
    ids=["settings", "flags"],
)
def test_two_for_bad_configuration_before_anything_is_sent(job, sandbox, args, overrides, message):
    run = job.run(*args, **overrides)
    assert run.code == 2
    assert run.stderr == f"error: configuration: {message}\n"
    assert run.stdout == ""
    assert sandbox.stats()["total_requests"] == 0
    assert run.results_path is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"MYSQL_PORT": "1"}, "cannot reach MySQL at 127.0.0.1:1"),
        ({"MYSQL_PASSWORD": "wrong"}, "MySQL refused user"),
        ({"MYSQL_DATABASE": "no_such_db"}, "may not use database 'no_such_db'"),
    ],
)
def test_three_when_the_database_is_unusable(job, sandbox, overrides, message):
    run = job.run(**overrides)
    assert_clean_failure(run, 3, message)
    assert sandbox.stats()["total_requests"] == 0
    assert "wrong" not in last_line(run)


def test_three_when_a_table_is_missing(job, mariadb, seeded_db):
    mariadb.execute("DROP TABLE page_views", database=seeded_db.name)
    assert_clean_failure(job.run(), 3, "a table Query 2 needs is missing")


def test_three_when_the_key_is_rejected(job):
    assert_clean_failure(job.run(ITERABLE_API_KEY="bad"), 3, "Iterable rejected the API key")


def test_four_when_another_run_holds_the_lock(job, sandbox):
    lock_path = job.env["LOCK_FILE"]
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        run = job.run()
    finally:
        os.close(fd)
    assert_clean_failure(run, 4, "another run holds the lock")
    assert sandbox.stats()["total_requests"] == 0
    assert job.run().code == 1  # and the lock is free again afterwards


def test_help_exits_zero_and_lists_exit_codes(job):
    run = job.run("--help")
    assert run.code == 0
    assert "Exit codes" in run.stdout and "--dry-run" in run.stdout
