"""Runs that cannot go on, because Iterable is down or rejects the key: the job stops taking
rows at once and exits 3 with one error line. Rows in flight are recorded as `interrupted`
(no warning line each), rows never attempted are left out, and the next run sends them.
A blip that recovers is not an outage.
"""

from __future__ import annotations

import re
import socket

import pytest

from devtools.bulk_seed import add_pro_customers
from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER
from iterable_client import OUTAGE_FAILURES_IN_A_ROW
from sandbox import DEFAULT_API_KEY
from tests.support.oracle import audit, expected_store, unbacked_state_claims

ROWS = 300
MODES = {
    "single": ("--mode", "single"),
    # Small batches, so that a bulk run makes enough calls to see the outage.
    "bulk": ("--mode", "bulk", "--batch-size", "10"),
}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def row_warnings(stderr: str) -> list[str]:
    """Warning lines about rows, but the seed's malformed email, which fails on its own."""
    return [
        line
        for line in stderr.splitlines()
        if " WARNING " in line and f"customer {SEED_MALFORMED_EMAIL_CUSTOMER} " not in line
    ]


def assert_stopped_in_one_line(run, message: str) -> None:
    assert run.code == 3, run.stderr[-2000:]
    assert "Traceback" not in run.stderr + run.stdout
    errors = [line for line in run.stderr.splitlines() if "ERROR" in line or "error:" in line]
    assert errors == [f"error: {message}"], run.stderr[-2000:]
    assert row_warnings(run.stderr) == []
    assert run.results["run"]["aborted"] == message
    assert run.results["run"]["stopped_by_signal"] is False


def assert_rows_were_interrupted_or_left(run, expected) -> None:
    rows = run.by_customer()
    reasons = {(row["status"], row["reason"]) for row in rows.values()}
    assert reasons <= {("failed", "interrupted"), ("failed", "invalid_email")}, reasons
    assert len(rows) < len(expected.emails), "the run went on taking rows"
    assert run.results["run"]["rows_read"] == len(rows)


def assert_the_next_run_sends_everything_once(job, sandbox, expected, mode: str) -> None:
    sandbox.clear_faults()
    rerun = job.run(*MODES[mode])
    # The seed's malformed email fails (1), or was rejected by the first run already (0).
    assert rerun.code in (0, 1), rerun.stderr[-2000:]
    assert rerun.results["summary"]["failed"] <= 1
    result = audit(sandbox, expected)
    assert result.lost == [] and result.duplicated == []
    assert unbacked_state_claims(job.state_file, sandbox) == []


@pytest.mark.parametrize("mode", list(MODES))
def test_an_unreachable_iterable_stops_the_run(job, sandbox, mariadb, seeded_db, mode):
    add_pro_customers(mariadb, seeded_db.name, ROWS)
    expected = expected_store(mariadb, seeded_db.name)
    url = f"http://127.0.0.1:{closed_port()}"
    run = job.run(*MODES[mode], ITERABLE_BASE_URL=url)
    message = run.results["run"]["aborted"]
    assert_stopped_in_one_line(run, message)
    # Single mode: 20 requests fail at once. Bulk mode: a batch gives up after 5 attempts
    # while the others fail too.
    in_a_row = OUTAGE_FAILURES_IN_A_ROW if mode == "single" else r"\d+"
    assert re.fullmatch(
        rf"Iterable at {url}: unreachable: {in_a_row} requests in a row failed; "
        "last: connection refused",
        message,
    ), message
    endpoint = "users/bulkUpdate" if mode == "bulk" else "users/update"
    assert set(run.results["run"]["api"]["requests"]) == {endpoint}
    assert_rows_were_interrupted_or_left(run, expected)
    assert_the_next_run_sends_everything_once(job, sandbox, expected, mode)


def test_5xx_for_every_request_stops_the_run(job, sandbox, mariadb, seeded_db):
    add_pro_customers(mariadb, seeded_db.name, ROWS)
    expected = expected_store(mariadb, seeded_db.name)
    sandbox.add_fault("status", status=503, times=None)
    run = job.run()
    assert_stopped_in_one_line(
        run,
        f"Iterable at {sandbox.base_url}: unreachable: {OUTAGE_FAILURES_IN_A_ROW} requests in a "
        "row failed; last: HTTP 503",
    )
    assert_rows_were_interrupted_or_left(run, expected)
    assert sandbox.users() == {}
    assert_the_next_run_sends_everything_once(job, sandbox, expected, "single")


def test_a_blip_that_recovers_is_not_an_outage(job, sandbox, mariadb, seeded_db):
    """One request short of the threshold fails in a row, then Iterable answers again."""
    expected = expected_store(mariadb, seeded_db.name)
    sandbox.add_fault("drop", times=OUTAGE_FAILURES_IN_A_ROW - 1)
    run = job.run("--concurrency", "8")
    assert run.code == 1, run.stderr[-2000:]  # the seed's malformed email
    assert run.results["run"]["aborted"] is None
    assert sandbox.request_count(status="dropped") == OUTAGE_FAILURES_IN_A_ROW - 1
    assert run.results["summary"]["succeeded"] == len(expected.emails)
    result = audit(sandbox, expected)
    assert result.lost == [] and result.duplicated == []


@pytest.mark.parametrize(
    ("config", "status"),
    [({"api_keys": ["another-key"]}, 401), ({"forbidden_keys": [DEFAULT_API_KEY]}, 403)],
)
def test_a_rejected_key_stops_the_run_in_one_line(job, sandbox, mariadb, seeded_db, config, status):
    add_pro_customers(mariadb, seeded_db.name, ROWS)
    expected = expected_store(mariadb, seeded_db.name)
    sandbox.configure(config)
    run = job.run()
    assert run.code == 3
    message = run.results["run"]["aborted"]
    assert message.startswith(f"Iterable rejected the API key: HTTP {status} ")
    assert_stopped_in_one_line(run, message)
    assert_rows_were_interrupted_or_left(run, expected)
    # Every request counts, those the key was refused on too.
    refused = sandbox.request_count("users/update", status)
    assert refused > 0
    assert run.results["run"]["api"]["requests"] == {"users/update": {str(status): refused}}
    sandbox.configure({"api_keys": [DEFAULT_API_KEY], "forbidden_keys": []})
    assert_the_next_run_sends_everything_once(job, sandbox, expected, "single")
