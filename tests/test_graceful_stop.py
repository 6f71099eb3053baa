"""SIGTERM and SIGINT mid-run: stop taking rows, let in-flight calls finish, save the state,
write the results, exit 3 - quickly, in one line and without a traceback. A second signal
stops at once. A rerun sends only the rest, and the runs together deliver every record
exactly once.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import datetime

import pytest
import requests

from devtools.bulk_seed import add_pro_customers
from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER
from iterable_client import IterableClient
from payloads import read_row
from results import ResultsWriter
from sandbox import DEFAULT_API_KEY
from sandbox import DEFAULT_API_KEY as API_KEY
from sync import Syncer
from tests.support.oracle import audit, expected_store, unbacked_state_claims
from tests.support.waiting import wait_until

ROWS = 300
LATENCY = 0.2  # per request, so a few hundred rows take far longer than the test waits
REQUEST_TIMEOUT = 2.0  # the job fixture's REQUEST_TIMEOUT_SECONDS
EXIT_BOUND = REQUEST_TIMEOUT + 3.0
MODES = {
    "single": ("--mode", "single", "--concurrency", "4"),
    "bulk": ("--mode", "bulk", "--batch-size", "20"),
}
CASES = [("single", signal.SIGTERM), ("single", signal.SIGINT), ("bulk", signal.SIGTERM)]


def settle(sandbox) -> None:
    """Return once every request that reached the sandbox before this call is counted.

    Every request waits the same latency before it is answered and counted, so when a
    request of our own has been answered, any request that arrived before it has been too.
    """
    requests.get(
        f"{sandbox.base_url}/api/users/getByEmail",
        params={"email": "settle@example.com"},
        headers={"Api-Key": API_KEY},
        timeout=10 + LATENCY,
    )


@pytest.mark.parametrize(("mode", "signum"), CASES, ids=[f"{m}-{s.name}" for m, s in CASES])
def test_signal_mid_run_stops_cleanly_and_the_rerun_sends_only_the_rest(
    job, sandbox, mariadb, seeded_db, mode, signum
):
    add_pro_customers(mariadb, seeded_db.name, ROWS)
    expected = expected_store(mariadb, seeded_db.name)
    sandbox.set_latency(LATENCY)
    process = job.start(*MODES[mode])
    try:
        wait_until(lambda: len(sandbox.events()) >= 4, 30, "the first events")
        process.send_signal(signum)
        signalled = time.monotonic()
        stdout, stderr = process.communicate(timeout=EXIT_BOUND + 10)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 3, stderr
    assert took < EXIT_BOUND, f"took {took:.1f}s to stop"
    assert "Traceback" not in stderr + stdout
    # One line says the run is stopping; the rows it interrupts get no line each.
    assert [line for line in stderr.splitlines() if " WARNING " in line] == [
        line
        for line in stderr.splitlines()
        if f"{signum.name} received: finishing the rows in flight" in line
        or f"customer {SEED_MALFORMED_EMAIL_CUSTOMER} " in line
    ]
    assert stderr.count(f"{signum.name} received") == 1
    assert "run stopped by a signal" in stdout

    # Nothing the job sent was still waiting in the sandbox when it exited, and in-flight
    # requests were answered, not cut off.
    after_exit = sandbox.stats()["total_requests"]
    settle(sandbox)
    assert sandbox.stats()["total_requests"] == after_exit + 1  # only our own request
    assert sandbox.request_count(status="client_gone") == 0
    assert sandbox.request_count(status="dropped") == 0

    # The results file says what was done, and it matches the sandbox.
    (results_path,) = job.results_dir.glob("integration_results_*.json")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    assert results["run"]["stopped_by_signal"] is True
    rows = {row["customer_id"]: row for row in results["results"]}
    assert 0 < len(rows) < len(expected.emails), "the run did not stop taking rows"
    assert results["run"]["rows_read"] == len(rows)
    done = {cid for cid, row in rows.items() if row["status"] == "success"}
    assert done, "nothing finished before the signal"
    for cid, row in rows.items():
        if cid in expected.emails and cid not in done:
            assert (row["status"], row["reason"]) == ("failed", "interrupted"), row
    users, events = sandbox.users(), sandbox.events()
    for cid in done:
        email = expected.emails[cid]
        assert users[email] == expected.users[email]
        assert rows[cid]["event_track"]["http_status"] == 200
    done_emails = {expected.emails[cid] for cid in done}
    if mode == "single":
        # A user is updated only when its event follows, even while stopping.
        assert set(users) == done_emails
    else:
        assert set(users) >= done_emails
    assert {event["email"] for event in events.values()} == done_emails
    # The saved state claims exactly what the sandbox holds.
    assert unbacked_state_claims(job.state_file, sandbox) == []

    # The rerun sends only the remainder; together the runs deliver each record once.
    sandbox.set_latency(0.0)
    rerun = job.run(*MODES[mode])
    assert rerun.code in (0, 1), rerun.stderr
    assert set(rerun.results["summary"]["by_reason"]) <= {
        "skipped:unchanged",
        "failed:invalid_email",
    }
    result = audit(sandbox, expected)
    assert result.lost == [] and result.duplicated == []
    # No profile and no event was sent twice, and the rerun sent what the stop left.
    assert set(sandbox.user_writes().values()) == {1}
    assert set(sandbox.event_writes().values()) == {1}
    again = rerun.by_customer()
    assert {cid for cid, row in again.items() if row["status"] == "success"} == (
        set(expected.emails) - done
    )
    assert all(again[cid]["reason"] == "unchanged" for cid in done)


def test_signal_during_retry_backoff_ends_the_wait(job, sandbox, mariadb, seeded_db):
    """Calls waiting to retry (here for up to 15 s) give up at once; their rows are retried
    by the next run, and what Iterable did accept is not sent again."""
    expected = expected_store(mariadb, seeded_db.name)
    sandbox.add_fault("status", endpoint="events/track", status=503, times=None)
    process = job.start("--concurrency", "8", MAX_ATTEMPTS="6")
    try:
        wait_until(
            lambda: sandbox.request_count("events/track", 503) >= 2 * len(expected.events),
            30,
            "every event to be refused twice",
        )
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        stdout, stderr = process.communicate(timeout=EXIT_BOUND + 20)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 3, stderr
    assert took < EXIT_BOUND, f"took {took:.1f}s to stop"
    assert "Traceback" not in stderr + stdout
    (results_path,) = job.results_dir.glob("integration_results_*.json")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    assert results["run"]["stopped_by_signal"] is True
    failed = [row for row in results["results"] if row["customer_id"] in expected.emails]
    assert {(row["status"], row["reason"]) for row in failed} == {("failed", "interrupted")}
    assert {row["event_track"]["http_status"] for row in failed} == {503}
    assert all(row["event_track"]["attempts"] < 6 for row in failed)
    assert sandbox.events() == {}

    sandbox.clear_faults()
    rerun = job.run("--concurrency", "8")
    assert rerun.code == 0, rerun.stderr
    result = audit(sandbox, expected)
    assert result.lost == [] and result.duplicated == []
    assert set(sandbox.user_writes().values()) == {1}  # profiles were not sent again
    assert set(sandbox.event_writes().values()) == {1}


def test_signal_while_rate_limited_does_not_wait_out_retry_after(job, sandbox, mariadb, seeded_db):
    """Iterable asked for 20 s of quiet: the call that got the 429 waits in its backoff, the
    others wait for the paused limiter. A stop must end both waits, and send nothing more."""
    expected = expected_store(mariadb, seeded_db.name)
    sandbox.add_fault("status", endpoint="events/track", status=429, retry_after=20, times=None)
    process = job.start("--concurrency", "8")
    try:
        wait_until(lambda: sandbox.request_count("events/track", 429) >= 1, 30, "a 429")
        # Every update is done; the events wait for the paused limiter.
        wait_until(lambda: len(sandbox.users()) == len(expected.users), 30, "every profile update")
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        tracked = sandbox.request_count("events/track")
        stdout, stderr = process.communicate(timeout=60)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 3, stderr
    assert took < EXIT_BOUND, f"took {took:.1f}s to stop"
    assert sandbox.request_count("events/track") == tracked, "sent after the stop"
    assert len(sandbox.users()) == len(expected.users)
    assert "Traceback" not in stderr + stdout
    sandbox.clear_faults()
    assert job.run("--concurrency", "8").code == 0
    result = audit(sandbox, expected)
    assert result.lost == [] and result.duplicated == []
    assert set(sandbox.user_writes().values()) == {1}


def test_a_second_signal_stops_at_once_after_saving_the_state(job, sandbox, mariadb, seeded_db):
    """After the first signal the run waits for the requests in flight (here they hang for
    5 s); the second one does not: it saves the state and the results and exits 3."""
    add_pro_customers(mariadb, seeded_db.name, ROWS)
    expected = expected_store(mariadb, seeded_db.name)
    process = job.start("--concurrency", "4", REQUEST_TIMEOUT_SECONDS="30")
    try:
        wait_until(lambda: len(sandbox.events()) >= 4, 30, "the first events")
        sandbox.add_fault("delay", endpoint="users/update", delay=5.0, times=None)
        wait_until(lambda: sandbox.stats()["faults_applied"] >= 4, 30, "updates to hang")
        process.send_signal(signal.SIGINT)
        wait_until(lambda: "SIGINT received" in job.log_file.read_text(), 30, "the first signal")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 3, stderr
    assert "Traceback" not in stderr + stdout
    assert "SIGINT received again: saving the state and stopping at once" in stderr
    # It did not wait: the hanging updates found their client gone.
    wait_until(
        lambda: sandbox.request_count(status="client_gone") >= 4, 30, "the sandbox to notice"
    )
    (results_path,) = job.results_dir.glob("integration_results_*.json")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    assert results["run"]["stopped_by_signal"] is True
    done = {row["customer_id"] for row in results["results"] if row["status"] == "success"}
    assert done
    assert unbacked_state_claims(job.state_file, sandbox) == []

    sandbox.clear_faults()
    rerun = job.run("--concurrency", "4")
    assert rerun.code in (0, 1), rerun.stderr
    again = rerun.by_customer()
    # The state had saved what was done: none of it is sent again.
    assert all(again[cid]["reason"] == "unchanged" for cid in done)
    result = audit(sandbox, expected)
    assert result.lost == [] and result.duplicated == []


def customer_rows(count: int) -> list[dict[str, object]]:
    return [
        {
            "customer_id": n,
            "email": f"c{n}@example.com",
            "first_name": "Ann",
            "last_name": "Lee",
            "plan_type": "pro",
            "page_view_id": n,
            "page": "/a",
            "device": "desktop",
            "location": None,
            "viewed_at": datetime(2026, 1, 5, 12, n),
        }
        for n in range(1, count + 1)
    ]


@pytest.mark.parametrize(("stop_after", "stopped"), [(10, False), (1, True)])
def test_only_a_signal_that_cut_rows_short_counts_as_a_stop(sandbox, tmp_path, stop_after, stopped):
    """A signal that comes once every row is done (here: when the last row is recorded)
    does not make the run a stopped one; one that comes earlier does."""
    rows = customer_rows(10)
    sandbox.set_latency(0.05)
    stop = threading.Event()
    recorded = [0]

    def on_rows(count: int) -> None:
        recorded[0] += count
        if recorded[0] - count < stop_after <= recorded[0]:
            stop.set()

    writer = ResultsWriter(tmp_path)
    with IterableClient(DEFAULT_API_KEY, sandbox.base_url, stop=stop) as client:
        syncer = Syncer(client=client, writer=writer, stop=stop, on_rows=on_rows)
        outcome = syncer.run_single(map(read_row, rows), 4)
        syncer.close()
    writer.discard()
    assert outcome.stopped is stopped
    interrupted = writer.summary.reasons["failed:interrupted"]
    if stopped:
        assert interrupted > 0
    else:
        assert (writer.summary.succeeded, interrupted) == (10, 0)
