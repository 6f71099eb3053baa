"""MYSQL_UNIX_SOCKET: the job reaches a server through its Unix socket, not over TCP.

MYSQL_PORT points at a closed port in these tests, so only the socket can work.
"""

from __future__ import annotations

import os

import pytest

CLOSED_PORT = "1"


@pytest.fixture
def server_socket(mariadb) -> str:
    if mariadb.unix_socket is None:
        message = "the test server's Unix socket is unknown (set TEST_MYSQL_UNIX_SOCKET)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return mariadb.unix_socket


def test_check_says_it_connected_over_the_socket(job, sandbox, seeded_db, server_socket):
    run = job.run("--check", MYSQL_UNIX_SOCKET=server_socket, MYSQL_PORT=CLOSED_PORT)
    assert run.code == 0, run.stdout + run.stderr
    assert (
        f"database: ok: connected to database {seeded_db.name} over the Unix socket {server_socket}"
    ) in run.stdout.splitlines()
    assert "database: ok: Query 2 runs; first row: customer 1" in run.stdout


def test_a_run_reads_its_rows_through_the_socket(job, sandbox, seeded_db, server_socket):
    run = job.run(MYSQL_UNIX_SOCKET=server_socket, MYSQL_PORT=CLOSED_PORT)
    assert run.code == 1, run.stderr  # the seed's malformed email
    assert run.results["run"]["database"] == f"{server_socket} (database {seeded_db.name})"
    assert run.results["summary"]["succeeded"] == 6
    assert len(sandbox.users()) == 6


def test_a_missing_socket_is_a_database_failure(job, sandbox, tmp_path):
    gone = tmp_path / "gone.sock"
    run = job.run(MYSQL_UNIX_SOCKET=str(gone))
    assert run.code == 3, run.stderr
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: cannot reach MySQL through the Unix socket {gone}")
    )
    assert sandbox.stats()["total_requests"] == 0
