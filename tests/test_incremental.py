"""Incremental sync: only what changed is sent, failures retried next run, state kept safe."""

from __future__ import annotations

import sqlite3

import pytest

from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER, SEED_QUALIFYING

SENT = {cid: pv for cid, pv in SEED_QUALIFYING.items() if cid != SEED_MALFORMED_EMAIL_CUSTOMER}


@pytest.mark.parametrize("mode", ["single", "bulk"])
def test_second_run_on_unchanged_data_makes_no_calls_and_exits_zero(job, sandbox, mode):
    first = job.run("--mode", mode)
    assert first.code == 1
    calls = sandbox.stats()["total_requests"]
    second = job.run("--mode", mode)
    assert second.code == 0, second.stdout
    assert sandbox.stats()["total_requests"] == calls
    rows = second.by_customer()
    malformed = rows.pop(SEED_MALFORMED_EMAIL_CUSTOMER)
    assert {row["status"] for row in rows.values()} == {"skipped"}
    assert {row["reason"] for row in rows.values()} == {"unchanged"}
    # Still failing, but reported as outstanding: it alerted on the first run.
    assert (malformed["status"], malformed["reason"]) == ("failed", "invalid_email")
    assert malformed["outstanding"] is True and malformed["failing_since"]
    summary = second.results["summary"]
    assert (summary["failed"], summary["outstanding"]) == (1, 1)
    assert summary["failing_since"] == malformed["failing_since"]
    assert f"1 outstanding (failing since {malformed['failing_since']})" in second.stdout


def test_only_changed_profiles_and_new_events_are_sent(job, sandbox, mariadb, seeded_db):
    job.run()
    mariadb.execute(
        "UPDATE customers SET last_name = 'Changed' WHERE id = 1", database=seeded_db.name
    )
    mariadb.execute(
        "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
        "VALUES (100, 2, '/new', 'mobile', 'Lisbon', UTC_TIMESTAMP())",
        database=seeded_db.name,
    )
    before = sandbox.stats()["by_endpoint"]
    run = job.run()
    after = sandbox.stats()["by_endpoint"]
    sent_updates = after["users/update"]["200"] - before["users/update"]["200"]
    sent_events = after["events/track"]["200"] - before["events/track"]["200"]
    assert (sent_updates, sent_events) == (2, 1)  # customer 1's name; customer 2's new page
    rows = run.by_customer()
    assert rows[1]["status"] == "success" and rows[1]["event_track"] == {"skipped": "unchanged"}
    assert rows[2]["status"] == "success" and rows[2]["event_track"]["code"] == "Success"
    assert "page-view-100" in sandbox.events()
    assert sandbox.users()[rows[1]["email"]]["last_name"] == "Changed"
    assert all(rows[cid]["reason"] == "unchanged" for cid in SENT if cid not in (1, 2))


def test_failures_are_retried_on_the_next_run(job, sandbox):
    sandbox.add_fault("status", endpoint="events/track", status=503, times=None)
    first = job.run(MAX_ATTEMPTS="1")
    assert first.code == 1
    assert sandbox.events() == {}
    sandbox.clear_faults()
    second = job.run()
    rows = second.by_customer()
    assert all(rows[cid]["status"] == "success" for cid in SENT)
    assert all(rows[cid]["user_update"] == {"skipped": "unchanged"} for cid in SENT)
    assert set(sandbox.events()) == {f"page-view-{pv}" for pv in SENT.values()}
    assert set(sandbox.user_writes().values()) == {1}


def test_permanent_rejection_waits_for_the_row_to_change(job, sandbox, mariadb, seeded_db):
    run = job.run()
    email = run.by_customer()[3]["email"]
    sandbox.mark_conflict(email)
    mariadb.execute("UPDATE customers SET last_name = 'X' WHERE id = 3", database=seeded_db.name)
    refused = job.run()
    assert refused.code == 1  # a new failure alerts
    first = refused.by_customer()[3]
    assert (first["status"], first["reason"]) == ("failed", "ExternalKeyConflict")
    assert "outstanding" not in first
    requests_before = sandbox.stats()["total_requests"]
    again = job.run()
    assert again.code == 0  # the same failure on the same data does not alert twice
    rows = again.by_customer()
    assert (rows[3]["status"], rows[3]["reason"]) == ("failed", "ExternalKeyConflict")
    assert rows[3]["outstanding"] is True
    assert sandbox.stats()["total_requests"] == requests_before
    mariadb.execute("UPDATE customers SET last_name = 'Y' WHERE id = 3", database=seeded_db.name)
    retried = job.run()
    assert retried.by_customer()[3]["reason"] == "ExternalKeyConflict"  # tried again
    assert "outstanding" not in retried.by_customer()[3] and retried.code == 1


def test_full_refresh_sends_everything_and_records_it(job, sandbox):
    job.run()
    run = job.run("--full-refresh")
    assert run.results["run"]["full_refresh"] is True
    assert run.results["summary"]["succeeded"] == len(SENT)
    assert set(sandbox.event_writes().values()) == {2}
    assert job.run().code == 0


def test_corrupt_state_is_refused_not_reset(job, sandbox):
    job.state_file.write_bytes(b"this is not a database" * 100)
    run = job.run()
    assert run.code == 2
    assert "sync state" in run.stderr.splitlines()[-1] and "unreadable" in run.stderr
    assert sandbox.stats()["total_requests"] == 0


def test_state_from_a_newer_version_is_refused(job, sandbox):
    job.run()
    with sqlite3.connect(job.state_file) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    calls = sandbox.stats()["total_requests"]
    run = job.run()
    assert run.code == 2 and "newer version" in run.stderr
    assert sandbox.stats()["total_requests"] == calls


def test_state_file_is_private(job):
    job.run()
    assert oct(job.state_file.stat().st_mode & 0o777) == "0o600"


def test_dry_run_never_writes_state(job, sandbox):
    job.run("--dry-run")
    assert not job.state_file.exists()
