"""Single mode with concurrency and bulk mode: same outcome, same results file, same exit codes."""

from __future__ import annotations

import json

import pytest

from devtools.bulk_seed import add_pro_customers
from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER, SEED_QUALIFYING
from tests.support.data import profile_in_iterable

SENT = {cid: pv for cid, pv in SEED_QUALIFYING.items() if cid != SEED_MALFORMED_EMAIL_CUSTOMER}


def statuses(run):
    return {cid: (row["status"], row["reason"]) for cid, row in run.by_customer().items()}


@pytest.mark.parametrize(
    "args",
    [
        ("--mode", "single", "--concurrency", "1"),
        ("--mode", "single", "--concurrency", "8"),
        ("--mode", "bulk"),
    ],
)
def test_every_mode_delivers_the_same(job, sandbox, args):
    run = job.run(*args, "--full-refresh")
    assert run.code == 1
    assert statuses(run) == {
        **{cid: ("success", None) for cid in SENT},
        SEED_MALFORMED_EMAIL_CUSTOMER: ("failed", "invalid_email"),
    }
    assert set(sandbox.events()) == {f"page-view-{pv}" for pv in SENT.values()}
    assert len(sandbox.users()) == len(SENT)
    assert sandbox.duplicate_events() == []


def test_mode_from_environment(job, sandbox):
    job.run(SYNC_MODE="bulk")
    by_endpoint = sandbox.stats()["by_endpoint"]
    assert set(by_endpoint) == {"users/bulkUpdate", "events/trackBulk"}


def test_bulk_sends_one_request_per_batch(job, sandbox):
    run = job.run("--mode", "bulk", BULK_BATCH_SIZE="4")
    assert run.code == 1
    sizes = sandbox.stats()["bulk_batch_sizes"]
    assert sizes["users/bulkUpdate"] == [4, 2]
    assert sorted(sizes["events/trackBulk"]) == [2, 4]
    row = run.by_customer()[1]
    assert row["user_update"]["batch_size"] == 4 and row["user_update"]["code"] is None


def test_each_user_is_updated_before_its_event(job, sandbox):
    job.run("--concurrency", "8")
    first_seen: dict[tuple[str, str], float] = {}
    for entry in sandbox.request_log():
        for email in entry.get("emails", []):
            first_seen.setdefault((entry["endpoint"], email), entry["t"])
    for email in sandbox.users():
        assert first_seen[("users/update", email)] <= first_seen[("events/track", email)]


def test_bulk_per_item_failures_map_to_their_rows(job, sandbox):
    run = job.run("--dry-run", ITERABLE_API_KEY=None)
    emails = {cid: row["email"] for cid, row in run.by_customer().items()}
    sandbox.mark_conflict(emails[1])
    sandbox.forget(emails[2])
    run = job.run("--mode", "bulk")
    rows = run.by_customer()
    assert (rows[1]["status"], rows[1]["reason"]) == ("failed", "conflict")
    assert rows[1]["event_track"] is None  # no event after a failed update
    assert (rows[2]["status"], rows[2]["reason"]) == ("skipped", "forgotten")
    assert all(rows[cid]["status"] == "success" for cid in SENT if cid not in (1, 2))
    assert "page-view-2" not in sandbox.events()


@pytest.mark.parametrize("mode", ["single", "bulk"])
def test_a_forgotten_user_is_skipped_and_not_sent_again(job, sandbox, mode):
    emails = {cid: row["email"] for cid, row in job.run("--dry-run").by_customer().items()}
    sandbox.forget(emails[1])
    first = job.run("--mode", mode)
    rows = first.by_customer()
    assert (rows[1]["status"], rows[1]["reason"]) == ("skipped", "forgotten")
    assert first.results["summary"]["by_reason"]["skipped:forgotten"] == 1
    assert emails[1] not in first.stderr  # masked in the log
    calls = sandbox.stats()["total_requests"]
    second = job.run("--mode", mode)
    assert second.by_customer()[1]["reason"] == "forgotten"
    assert second.code == 0  # a forgotten user is not a failure; the malformed row is outstanding
    assert sandbox.stats()["total_requests"] == calls


def test_bulk_batch_refused_for_one_bad_row_is_split_so_only_that_row_fails(
    job, sandbox, mariadb, seeded_db
):
    # Iterable has locked first_name as a number; only customer 3 still sends a string.
    mariadb.execute("UPDATE customers SET first_name = NULL WHERE id <> 3", database=seeded_db.name)
    profile_in_iterable(sandbox.base_url, "someone@example.com", first_name=12)
    run = job.run("--mode", "bulk")
    rows = run.by_customer()
    assert (rows[3]["status"], rows[3]["reason"]) == ("failed", "RequestFieldsTypesMismatched")
    assert all(rows[cid]["status"] == "success" for cid in SENT if cid != 3)
    assert len(sandbox.events()) == len(SENT) - 1


def test_bulk_item_named_by_a_400_fails_alone(job, sandbox):
    body = json.dumps(
        {"msg": "bad", "code": "BadJsonBody", "params": {"obj.users[2].dataFields": "x"}}
    )
    sandbox.add_fault("status", endpoint="users/bulkUpdate", status=400, body=body, times=1)
    run = job.run("--mode", "bulk")
    rows = run.by_customer()
    ordered = sorted(SENT)
    bad = ordered[2]
    assert (rows[bad]["status"], rows[bad]["reason"]) == ("failed", "BadJsonBody")
    assert all(rows[cid]["status"] == "success" for cid in ordered if cid != bad)
    # The refused batch, then the same batch without the named item.
    assert sandbox.request_count("users/bulkUpdate") == 2
    assert sandbox.stats()["bulk_batch_sizes"]["users/bulkUpdate"] == [len(SENT) - 1]


def test_bulk_whole_batch_transient_failure_is_retried(job, sandbox):
    sandbox.add_fault("status", endpoint="events/trackBulk", status=503, times=2)
    run = job.run("--mode", "bulk")
    assert run.code == 1
    assert len(sandbox.events()) == len(SENT)
    assert run.by_customer()[1]["event_track"]["attempts"] == 3


def test_bulk_rejected_key_aborts(job, sandbox):
    run = job.run("--mode", "bulk", ITERABLE_API_KEY="nope")
    assert run.code == 3 and sandbox.users() == {}


@pytest.mark.parametrize("status", [413, 400])
def test_a_batch_refused_as_too_large_is_halved_for_the_rest_of_the_run(
    job, sandbox, mariadb, seeded_db, status
):
    add_pro_customers(mariadb, seeded_db.name, 40)
    # Iterable documents no record count; this one refuses more than 10 users a request,
    # with 413 or with 400 BatchTooLarge.
    sandbox.set_bulk_limits(10, too_large_status=status)
    run = job.run("--mode", "bulk", BULK_BATCH_SIZE="40", EVENTS_BATCH_SIZE="40")
    assert run.code == 1  # only the seed's malformed email
    assert len(sandbox.users()) == len(SENT) + 40  # nothing lost
    assert sandbox.duplicate_events() == []
    accepted = sandbox.stats()["bulk_batch_sizes"]
    # The batch of 40 was refused, then its halves of 20; batches of 10 went through.
    for endpoint in ("users/bulkUpdate", "events/trackBulk"):
        assert max(accepted[endpoint]) <= 10 and sum(accepted[endpoint]) == len(SENT) + 40
        assert sandbox.request_count(endpoint, status) == 3
    warnings = [line for line in run.stderr.splitlines() if "too large" in line]
    assert len(warnings) == 2  # one line per endpoint, not one per batch
    assert "users/bulkUpdate: Iterable refused a batch of 40 as too large" in warnings[0]
    assert "halving: at most 20 a request for the rest of the run" in warnings[0]


def test_bulk_bodies_stay_under_4_mb_whatever_the_count(job, sandbox, mariadb, seeded_db):
    add_pro_customers(mariadb, seeded_db.name, 200)
    # 30,000-character pages make each user and each event about 30 KB: 6 MB a batch.
    mariadb.execute("ALTER TABLE page_views MODIFY page TEXT NOT NULL", database=seeded_db.name)
    mariadb.execute(
        "UPDATE page_views SET page = CONCAT('/', REPEAT('p', 30000))", database=seeded_db.name
    )
    run = job.run("--mode", "bulk", BULK_BATCH_SIZE="20000", EVENTS_BATCH_SIZE="20000")
    assert run.code == 1, run.stderr  # only the seed's malformed email
    assert len(sandbox.users()) == len(SENT) + 200
    sizes = sandbox.stats()["bulk_batch_sizes"]
    # Cut by bytes, not by the count of 20,000; the sandbox refuses any body over 4 MB.
    assert len(sizes["users/bulkUpdate"]) >= 2 and len(sizes["events/trackBulk"]) >= 2
    assert sum(sizes["users/bulkUpdate"]) == len(SENT) + 200
    assert sandbox.request_count(status=400) == sandbox.request_count(status=413) == 0
