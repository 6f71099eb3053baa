"""Iterable stays true to the database as customers change, run after run.

Three runs over changing data, in both modes and with both ways of identifying users:
an email change, a pro -> free downgrade, a customer who goes inactive, one deleted from
`customers`, a new qualifying one and a forgotten one. After each run the sandbox's own
store is checked against the database.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import requests

from devtools.seed import SEED_MALFORMED_EMAIL_CUSTOMER
from sync_state import SCHEMA_VERSION
from tests.support.data import change_email, change_plan, profile_in_iterable, shift_views
from tests.support.job import BOTH_STORES

pytestmark = BOTH_STORES

MOVED, DOWNGRADED, INACTIVE, DELETED, FORGOTTEN, NEWCOMER = 1, 2, 3, 6, 5, 50
NEW_EMAIL = "alice.moved@example.com"


def query2_customers(mariadb, database: str) -> dict[int, str]:
    """customer id -> email of Query 2's result set now (the segment)."""
    conn = mariadb.connect(database, time_zone="+00:00")
    try:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT c.id, LOWER(TRIM(c.email)) FROM customers AS c "
            "JOIN page_views AS pv ON pv.customer_id = c.id "
            "WHERE c.plan_type = 'pro' AND pv.viewed_at >= UTC_TIMESTAMP() - INTERVAL 7 DAY "
            "GROUP BY c.id, c.email"
        )
        return {int(cid): str(email) for cid, email in cursor.fetchall()}
    finally:
        conn.close()


def profile_of(sandbox, customer_id: int, email: str, identify_by: str) -> dict[str, Any]:
    """The one profile that stands for the customer; fails if there are none or several."""
    if identify_by == "userId":
        found = [p for p in sandbox.profiles() if p["userId"] == str(customer_id)]
    else:
        found = [p for p in sandbox.profiles() if p["email"] == email]
    assert len(found) == 1, (customer_id, email, found)
    return found[0]


def members(sandbox, list_id: int, identify_by: str) -> set[str]:
    key = "userId" if identify_by == "userId" else "email"
    return {m[key] for m in sandbox.list_members(list_id)}


def expected_members(segment: dict[int, str], identify_by: str) -> set[str]:
    segment = {cid: email for cid, email in segment.items() if cid != FORGOTTEN}
    return {str(cid) for cid in segment} if identify_by == "userId" else set(segment.values())


@pytest.mark.parametrize("identify_by", ["email", "userId"])
@pytest.mark.parametrize("mode", ["single", "bulk"])
def test_three_runs_over_changing_customers(job, sandbox, mariadb, seeded_db, mode, identify_by):
    db = seeded_db.name
    list_id = sandbox.create_list("Active pro customers")
    env = {"ITERABLE_IDENTIFY_BY": identify_by, "ITERABLE_LIST_ID": str(list_id)}
    # A clean start: the seed's malformed email would fail every run's exit code.
    mariadb.execute(
        "UPDATE customers SET email = 'eight@example.com' WHERE id = %s",
        (SEED_MALFORMED_EMAIL_CUSTOMER,),
        database=db,
    )
    segment = query2_customers(mariadb, db)
    forgotten_email = segment[FORGOTTEN]
    sandbox.forget(str(FORGOTTEN) if identify_by == "userId" else forgotten_email)

    # Day one.
    first = job.run("--mode", mode, **env)
    assert first.code == 0, first.stdout + first.stderr
    rows = first.by_customer()
    assert (rows[FORGOTTEN]["status"], rows[FORGOTTEN]["reason"]) == ("skipped", "forgotten")
    assert forgotten_email not in first.stdout + first.stderr + job.log_file.read_text()
    for cid, email in segment.items():
        if cid != FORGOTTEN:
            profile_of(sandbox, cid, email, identify_by)
    assert members(sandbox, list_id, identify_by) == expected_members(segment, identify_by)
    old_email = segment[MOVED]
    old_events = set(profile_of(sandbox, MOVED, old_email, identify_by)["events"])

    # A month of change.
    change_email(mariadb, seeded_db, MOVED, NEW_EMAIL)
    change_plan(mariadb, seeded_db, DOWNGRADED, "free")
    shift_views(mariadb, seeded_db, INACTIVE, -60)
    mariadb.execute("DELETE FROM page_views WHERE customer_id = %s", (DELETED,), database=db)
    mariadb.execute("DELETE FROM customers WHERE id = %s", (DELETED,), database=db)
    mariadb.execute(
        "INSERT INTO customers (id, email, first_name, last_name, plan_type, created_at) "
        "VALUES (%s, 'newcomer@example.com', 'New', 'Comer', 'pro', UTC_TIMESTAMP())",
        (NEWCOMER,),
        database=db,
    )
    mariadb.execute(
        "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
        "VALUES (500, %s, '/welcome', 'desktop', 'Porto', UTC_TIMESTAMP())",
        (NEWCOMER,),
        database=db,
    )
    inactive_fields = profile_of(sandbox, INACTIVE, segment[INACTIVE], identify_by)["dataFields"]

    # Three of the six leave at once: a real change, which the mass-leave guard asks for.
    second = job.run("--mode", mode, "--allow-mass-leave", **env)
    assert second.code == 0, second.stdout + second.stderr
    rows = second.by_customer()
    segment = query2_customers(mariadb, db)
    # The email change moved the profile with its history; no second profile.
    moved = profile_of(sandbox, MOVED, NEW_EMAIL, identify_by)
    assert moved["email"] == NEW_EMAIL
    assert old_events <= set(moved["events"])
    assert not [p for p in sandbox.profiles() if p["email"] == old_email]
    assert rows[MOVED]["previous_email"] == old_email and rows[MOVED]["status"] == "success"
    if identify_by == "email":
        assert rows[MOVED]["update_email"]["http_status"] == 200
    # The downgrade reached Iterable; the inactive customer needed no call.
    downgraded = profile_of(sandbox, DOWNGRADED, rows[DOWNGRADED]["email"], identify_by)
    assert downgraded["dataFields"]["plan_type"] == "free"
    assert (rows[DOWNGRADED]["segment"], rows[DOWNGRADED]["status"]) == ("left", "success")
    assert (rows[INACTIVE]["segment"], rows[INACTIVE]["reason"]) == ("left", "unchanged")
    inactive = profile_of(sandbox, INACTIVE, rows[INACTIVE]["email"], identify_by)
    assert inactive["dataFields"] == inactive_fields
    assert (rows[DELETED]["segment"], rows[DELETED]["reason"]) == ("left", "left_deleted")
    assert second.results["summary"]["left"] == 3
    # The newcomer is in, the forgotten user still skipped, the list equals the segment.
    assert profile_of(sandbox, NEWCOMER, "newcomer@example.com", identify_by)
    assert rows[FORGOTTEN]["reason"] == "forgotten"
    assert members(sandbox, list_id, identify_by) == expected_members(segment, identify_by)
    assert set(sandbox.channel_unsubscribes()) == {False}
    assert not any(p["unsubscribed_globally"] for p in sandbox.profiles())
    assert sandbox.duplicate_events() == []

    # Nothing changed: nothing is sent.
    calls = sandbox.stats()["total_requests"]
    third = job.run("--mode", mode, **env)
    assert third.code == 0, third.stdout + third.stderr
    assert sandbox.stats()["total_requests"] == calls
    assert third.results["summary"]["left"] == 0


def test_an_email_taken_by_another_profile_is_a_warning_not_a_second_move(
    job, sandbox, mariadb, seeded_db
):
    first = job.run()
    old = first.by_customer()[MOVED]["email"]
    taken = "taken@example.com"
    profile_in_iterable(sandbox.base_url, taken, first_name="Someone")
    mariadb.execute(
        "UPDATE customers SET email = %s WHERE id = %s", (taken, MOVED), database=seeded_db.name
    )
    row = job.run().by_customer()[MOVED]
    assert row["status"] == "success" and row["previous_email"] == old
    assert any(w.startswith("email_change_conflict") for w in row["warnings"])
    assert [p["email"] for p in sandbox.profiles() if p["email"] in (old, taken)] == [old, taken]
    assert {p["email"]: p for p in sandbox.profiles()}[taken]["dataFields"]["last_name"]


def test_an_email_change_whose_old_profile_is_gone_creates_the_new_one(
    job, sandbox, mariadb, seeded_db
):
    old = job.run().by_customer()[MOVED]["email"]
    requests.delete(
        f"{sandbox.base_url}/api/users/{old}", headers={"Api-Key": "sandbox-key"}, timeout=5
    ).raise_for_status()
    mariadb.execute(
        "UPDATE customers SET email = %s WHERE id = %s", (NEW_EMAIL, MOVED), database=seeded_db.name
    )
    row = job.run().by_customer()[MOVED]
    assert row["status"] == "success"
    assert any(w.startswith("email_change_old_missing") for w in row["warnings"])
    assert NEW_EMAIL in sandbox.users()


def test_deleted_customers_are_deleted_in_iterable_only_when_asked(
    job, sandbox, mariadb, seeded_db
):
    email = job.run().by_customer()[DELETED]["email"]
    mariadb.execute(
        "DELETE FROM page_views WHERE customer_id = %s", (DELETED,), database=seeded_db.name
    )
    mariadb.execute("DELETE FROM customers WHERE id = %s", (DELETED,), database=seeded_db.name)
    row = job.run(ON_DELETED_CUSTOMER="delete").by_customer()[DELETED]
    assert (row["segment"], row["status"], row["reason"]) == ("left", "success", "left_deleted")
    assert email not in sandbox.users()
    assert sandbox.deleted() == [{"email": email, "userId": None}]
    calls = sandbox.stats()["total_requests"]
    assert DELETED not in job.run(ON_DELETED_CUSTOMER="delete").by_customer()
    assert sandbox.stats()["total_requests"] == calls


def test_dry_run_lists_leavers_with_what_it_would_send(job, sandbox, mariadb, seeded_db):
    job.run()
    mariadb.execute(
        "UPDATE customers SET plan_type = 'free' WHERE id = %s",
        (DOWNGRADED,),
        database=seeded_db.name,
    )
    calls = sandbox.stats()["total_requests"]
    row = job.run("--dry-run").by_customer()[DOWNGRADED]
    assert (row["segment"], row["status"], row["reason"]) == ("left", "skipped", "dry_run")
    assert row["payloads"]["user_update"]["dataFields"]["plan_type"] == "free"
    assert sandbox.stats()["total_requests"] == calls
    assert job.run().by_customer()[DOWNGRADED]["status"] == "success"  # the dry run kept nothing


def test_a_list_that_does_not_exist_stops_the_run_before_anything_is_sent(job, sandbox):
    run = job.run(ITERABLE_LIST_ID="999")
    assert run.code == 3
    assert run.stderr.strip().splitlines()[-1] == (
        "error: ITERABLE_LIST_ID 999 is not a list of this Iterable project; nothing was sent"
    )
    assert sandbox.request_count("users/update") == 0


def test_a_state_file_from_the_previous_version_is_migrated_not_discarded(job, sandbox):
    job.sqlite_only()
    job.run()
    downgrade_to_schema_1(job.state_file)
    writes = sandbox.request_count("users/update") + sandbox.request_count("events/track")
    run = job.run()
    # Nothing resent; the old file names no Iterable project, so one customer is looked up.
    assert sandbox.request_count("users/update") + sandbox.request_count("events/track") == writes
    assert sandbox.request_count("users/getByEmail") == 1
    assert {row["reason"] for row in run.results["results"] if row["status"] == "skipped"} == {
        "unchanged"
    }
    with sqlite3.connect(job.state_file) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert int(version[0]) == SCHEMA_VERSION


def downgrade_to_schema_1(path) -> None:
    """Rewrite a state file the way version 1 kept it: integer ids, fingerprints only."""
    with sqlite3.connect(path) as db:
        users = db.execute("SELECT customer_id, fingerprint, accepted_at FROM users").fetchall()
        events = db.execute("SELECT event_id, customer_id, accepted_at FROM events").fetchall()
        rejections = db.execute(
            "SELECT customer_id, fingerprint, reason, rejected_at FROM rejections"
        ).fetchall()
        for table in ("users", "events", "rejections", "forgotten", "list_members", "meta"):
            db.execute(f"DROP TABLE {table}")
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
            "CREATE TABLE users (customer_id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL,"
            " accepted_at TEXT NOT NULL);"
            "CREATE TABLE events (event_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL,"
            " accepted_at TEXT NOT NULL);"
            "CREATE TABLE rejections (customer_id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL,"
            " reason TEXT NOT NULL, rejected_at TEXT NOT NULL);"
        )
        db.executemany("INSERT INTO users VALUES (?, ?, ?)", [(int(c), f, a) for c, f, a in users])
        db.executemany(
            "INSERT INTO events VALUES (?, ?, ?)", [(e, int(c), a) for e, c, a in events]
        )
        db.executemany(
            "INSERT INTO rejections VALUES (?, ?, ?, ?)",
            [(int(c), f, r, a) for c, f, r, a in rejections],
        )
