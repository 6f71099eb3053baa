"""Runs that cannot go on, because Iterable is down or rejects the key: the job stops taking
rows at once and exits 3 with one error line. Rows in flight are recorded as `interrupted`
(no warning line each), rows never attempted are left out, and the next run sends them.

Iterable is down when no request has succeeded for OUTAGE_SECONDS; until then a storm of
failures only slows the run to one request at a time, and a storm that passes costs nothing.
The run's first request goes alone, so a rejected key costs one request.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from devtools.bulk_seed import add_pro_customers
from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER
from sandbox import DEFAULT_API_KEY
from tests.support.oracle import audit, expected_store, unbacked_state_claims

ROWS = 300
MODES = {
    "single": ("--mode", "single"),
    # Small batches, so that a bulk run makes enough calls to see the outage.
    "bulk": ("--mode", "bulk", "--batch-size", "10"),
}
# Outages declared sooner than the default 30 s, where the test is not about the default.
SHORT_OUTAGE = {"OUTAGE_SECONDS": "3"}
OUTAGE_MESSAGE = (
    r"Iterable at {url}: unreachable: \d+ requests in a row failed over (\d+)s; last: {last}"
)


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
    run = job.run(*MODES[mode], ITERABLE_BASE_URL=url, **SHORT_OUTAGE)
    message = run.results["run"]["aborted"]
    assert_stopped_in_one_line(run, message)
    pattern = OUTAGE_MESSAGE.format(url=re.escape(url), last="connection refused")
    assert re.fullmatch(pattern, message), message
    endpoint = "users/bulkUpdate" if mode == "bulk" else "users/update"
    assert set(run.results["run"]["api"]["requests"]) == {endpoint}
    assert_rows_were_interrupted_or_left(run, expected)
    assert_the_next_run_sends_everything_once(job, sandbox, expected, mode)


def test_5xx_for_every_request_stops_the_run(job, sandbox, mariadb, seeded_db):
    """With the default OUTAGE_SECONDS, at the default concurrency: a few requests, one at a
    time, then exit 3 well within 90 s."""
    add_pro_customers(mariadb, seeded_db.name, ROWS)
    expected = expected_store(mariadb, seeded_db.name)
    sandbox.add_fault("status", status=503, times=None)
    started = time.monotonic()
    run = job.run()
    took = time.monotonic() - started
    message = run.results["run"]["aborted"]
    assert_stopped_in_one_line(run, message)
    pattern = OUTAGE_MESSAGE.format(url=re.escape(sandbox.base_url), last="HTTP 503")
    assert (matched := re.fullmatch(pattern, message)), message
    assert 30 <= int(matched.group(1)) < 35
    assert took < 90
    assert sandbox.stats()["total_requests"] < 30
    assert_rows_were_interrupted_or_left(run, expected)
    assert sandbox.users() == {}
    assert_the_next_run_sends_everything_once(job, sandbox, expected, "single")


def assert_done_as_if_nothing_happened(run, sandbox, expected) -> None:
    assert run.code == 1, run.stderr[-2000:]  # the seed's malformed email
    assert "Traceback" not in run.stderr + run.stdout
    assert run.results["run"]["aborted"] is None
    assert run.results["summary"]["succeeded"] == len(expected.emails)
    result = audit(sandbox, expected)
    assert result.lost == [] and result.duplicated == []


def test_a_storm_of_a_few_seconds_at_full_concurrency_is_not_an_outage(
    job, sandbox, mariadb, seeded_db
):
    """Every request fails for 3 s, in the middle of a run at the default concurrency: the run
    slows to one request at a time, then goes on at full speed."""
    add_pro_customers(mariadb, seeded_db.name, ROWS)
    expected = expected_store(mariadb, seeded_db.name)
    sandbox.add_fault("status", status=503, times=None, after=150, seconds=3)
    run = job.run()
    assert_done_as_if_nothing_happened(run, sandbox, expected)
    assert sandbox.stats()["faults_applied"] >= 100  # the storm hit at full concurrency


def test_a_blip_on_the_first_requests_of_each_endpoint_is_not_an_outage(
    job, sandbox, mariadb, seeded_db
):
    add_pro_customers(mariadb, seeded_db.name, ROWS)
    expected = expected_store(mariadb, seeded_db.name)
    for endpoint in ("users/update", "events/track"):
        sandbox.add_fault("status", endpoint=endpoint, status=503, times=None, seconds=1.5)
    run = job.run()
    assert_done_as_if_nothing_happened(run, sandbox, expected)
    assert sandbox.request_count("events/track", 503) > 0


def test_failures_for_a_little_less_than_outage_seconds_are_not_an_outage(
    job, sandbox, mariadb, seeded_db
):
    """Every connection dropped for 2.5 s, with OUTAGE_SECONDS=3: a probe at the deadline
    finds Iterable back."""
    expected = expected_store(mariadb, seeded_db.name)
    sandbox.add_fault("drop", times=None, seconds=2.5)
    run = job.run(**SHORT_OUTAGE)
    assert_done_as_if_nothing_happened(run, sandbox, expected)
    assert sandbox.request_count(status="dropped") >= 4


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(
    ("config", "status"),
    [({"api_keys": ["another-key"]}, 401), ({"forbidden_keys": [DEFAULT_API_KEY]}, 403)],
)
def test_a_rejected_key_costs_one_request_and_stops_the_run_in_one_line(
    job, sandbox, mariadb, seeded_db, config, status, mode
):
    add_pro_customers(mariadb, seeded_db.name, ROWS)
    expected = expected_store(mariadb, seeded_db.name)
    sandbox.configure(config)
    run = job.run(*MODES[mode])
    assert run.code == 3
    message = run.results["run"]["aborted"]
    assert message.startswith(f"Iterable rejected the API key: HTTP {status} ")
    assert_stopped_in_one_line(run, message)
    assert_rows_were_interrupted_or_left(run, expected)
    # The run's first request went alone, and the key was refused on it.
    assert sandbox.stats()["total_requests"] == 1
    endpoint = "users/bulkUpdate" if mode == "bulk" else "users/update"
    assert run.results["run"]["api"]["requests"] == {endpoint: {str(status): 1}}
    sandbox.configure({"api_keys": [DEFAULT_API_KEY], "forbidden_keys": []})
    assert_the_next_run_sends_everything_once(job, sandbox, expected, "single")
