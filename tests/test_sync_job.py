"""The sync job end to end: real MariaDB, real HTTP to the local sandbox, main.py."""

from __future__ import annotations

import re
import stat
from datetime import UTC, datetime

from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER, SEED_QUALIFYING
from sandbox import DEFAULT_API_KEY as API_KEY

SEED_EMAILS = {
    1: "alice.pro@example.com",
}


def test_first_run_sends_every_qualifying_customer_once(job, sandbox):
    run = job.run()
    # The seed holds one pro customer with a malformed email: that row fails, the rest succeed.
    assert run.code == 1, run.stderr
    results = run.results
    assert results["summary"]["total"] == len(SEED_QUALIFYING)
    assert results["summary"]["succeeded"] == len(SEED_QUALIFYING) - 1
    assert results["summary"]["failed"] == 1
    rows = run.by_customer()
    assert set(rows) == set(SEED_QUALIFYING)
    bad = rows[SEED_MALFORMED_EMAIL_CUSTOMER]
    assert (bad["status"], bad["reason"]) == ("failed", "invalid_email")
    assert bad["user_update"] is None and bad["event_track"] is None

    sent = {cid: row["email"] for cid, row in rows.items() if row["status"] == "success"}
    assert set(sandbox.users()) == set(sent.values())
    expected_events = {f"page-view-{SEED_QUALIFYING[cid]}" for cid in sent}
    assert set(sandbox.events()) == expected_events
    assert sandbox.duplicate_events() == []
    for row in rows.values():
        if row["status"] == "success":
            assert row["user_update"]["http_status"] == 200
            assert row["user_update"]["code"] == "Success"
            assert row["event_track"]["code"] == "Success"


def test_profile_and_event_fields_as_stored_in_iterable(job, sandbox):
    run = job.run(CANDIDATE_NAME="Jane Doe")
    rows = run.by_customer()
    email = rows[9]["email"]  # latest view has NULL device and location
    assert sandbox.users()[email] == {
        "first_name": sandbox.users()[email]["first_name"],
        "last_name": sandbox.users()[email]["last_name"],
        "plan_type": "pro",
        "recent_page_view": sandbox.events()["page-view-23"]["dataFields"]["page"],
        "candidate": "Jane Doe",
    }
    event = sandbox.events()["page-view-23"]
    assert event["eventName"] == "page_view"
    assert event["email"] == email
    assert set(event["dataFields"]) == {"page", "timestamp", "candidate"}  # NULLs left out
    stamp = event["dataFields"]["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+00:00", stamp)
    as_time = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S %z")
    assert event["createdAt"] == int(as_time.timestamp())
    assert datetime.now(UTC).timestamp() - event["createdAt"] < 7 * 86400
    # Non-ASCII names survive the trip.
    assert sandbox.users()[rows[2]["email"]]["first_name"] == "José"


def test_results_file_shape_name_and_permissions(job):
    run = job.run()
    path = run.results_path
    assert re.fullmatch(r"integration_results_\d{8}_\d{6}\.json", path.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(job.log_file.stat().st_mode) == 0o600
    results = run.results
    assert {"started_at", "finished_at", "dry_run"} <= set(results["run"])
    assert results["run"]["dry_run"] is False
    assert {"total", "succeeded", "failed", "skipped"} <= set(results["summary"])
    for row in results["results"]:
        assert {"customer_id", "email", "status", "reason", "user_update", "event_track"} <= set(
            row
        )
        assert row["status"] in ("success", "failed", "skipped")
    assert not list(path.parent.glob(".*")), "temporary files left behind"


def test_console_summary(job):
    run = job.run()
    assert f"{len(SEED_QUALIFYING)} users: 6 succeeded, 1 failed, 0 skipped" in run.stdout
    assert "failed:invalid_email: 1" in run.stdout
    assert f"results: {run.results_path}" in run.stdout


def test_dry_run_calls_nothing_and_needs_no_key(job, sandbox):
    run = job.run("--dry-run", ITERABLE_API_KEY=None)
    assert run.code == 1  # the malformed email is still a failed row
    assert sandbox.stats()["total_requests"] == 0
    results = run.results
    assert results["run"]["dry_run"] is True
    rows = run.by_customer()
    for cid, row in rows.items():
        if cid == SEED_MALFORMED_EMAIL_CUSTOMER:
            continue
        assert (row["status"], row["reason"]) == ("skipped", "dry_run")
        assert row["payloads"]["user_update"]["email"] == row["email"]
        assert row["payloads"]["event_track"]["id"] == f"page-view-{SEED_QUALIFYING[cid]}"


def test_rejected_key_aborts_at_once(job, sandbox):
    run = job.run(ITERABLE_API_KEY="wrong-key-123", CONCURRENCY="1")
    assert run.code == 3
    assert sandbox.stats()["total_requests"] == 1
    assert sandbox.users() == {}
    assert run.stderr.strip().splitlines()[-1].startswith("error: Iterable rejected the API key")
    assert "Traceback" not in run.stderr
    assert "wrong-key-123" not in run.stderr + run.stdout + job.log_file.read_text()
    assert "wrong-key-123" not in run.results_path.read_text()
    assert run.results["run"]["aborted"].startswith("Iterable rejected the API key")


def test_rejected_key_with_concurrency_stops_quickly(job, sandbox):
    run = job.run(ITERABLE_API_KEY="wrong-key-123", CONCURRENCY="4")
    assert run.code == 3
    assert sandbox.stats()["total_requests"] <= 4
    assert sandbox.users() == {}


def test_emails_masked_and_key_absent_from_logs(job, sandbox):
    # A refused row puts its (masked) email in a warning line.
    emails = {row["customer_id"]: row["email"] for row in job.run("--dry-run").results["results"]}
    sandbox.mark_conflict(emails[1])
    run = job.run("--log-level", "DEBUG")
    log_text = job.log_file.read_text()
    everything = log_text + run.stderr + run.stdout
    for row in run.results["results"]:
        if "@" in row["email"]:
            assert row["email"] not in everything
    assert API_KEY not in everything
    assert job.env["MYSQL_PASSWORD"] not in everything
    assert re.search(r"\w\*\*\*@example\.com", log_text)


def test_rerun_with_full_refresh_updates_not_duplicates(job, sandbox):
    job.run()
    job.run("--full-refresh")
    assert sandbox.duplicate_events() == []
    assert len(sandbox.events()) == len(SEED_QUALIFYING) - 1
    assert set(sandbox.event_writes().values()) == {2}
