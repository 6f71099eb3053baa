"""Every lifecycle rule off its main path: reruns, flags, odd answers and returning customers.

Each test runs `main.py` against the seeded MariaDB and the sandbox, changes the database
or Iterable the way real data does, and checks what the sandbox holds afterwards. The
rule under test is named in each test's first line.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import requests

from sandbox import DEFAULT_API_KEY
from tests.support.data import change_plan, profile_in_iterable, shift_views, sql
from tests.support.job import BOTH_STORES

pytestmark = BOTH_STORES

ALICE, JOSE, XIAOMING, SAM = 1, 2, 3, 5
ALICE_EMAIL = "alice.anderson@example.com"
JOSE_EMAIL = "jose.muller@example.com"
NEW_EMAIL = "alice.moved@example.com"
HEADERS = {"Api-Key": DEFAULT_API_KEY}


# Alice's latest page in the seed: a new view of it changes the event, not the profile.
ALICE_PAGE = "/app/dashboard?tab=usage"


def new_view(mariadb, seeded_db, customer_id: int, view_id: int, page: str = ALICE_PAGE) -> None:
    sql(
        mariadb,
        seeded_db,
        "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
        "VALUES (%s, %s, %s, 'desktop', 'Berlin, DE', UTC_TIMESTAMP())",
        view_id,
        customer_id,
        page,
    )


def profiles_for(sandbox, customer_id: int, emails: set[str]) -> list[dict[str, Any]]:
    return [
        p for p in sandbox.profiles() if p["userId"] == str(customer_id) or p["email"] in emails
    ]


def profile_with(sandbox, email: str) -> dict[str, Any]:
    [profile] = [p for p in sandbox.profiles() if p["email"] == email]
    return profile


def member_emails(sandbox, list_id: int) -> set[str]:
    return {m["email"] for m in sandbox.list_members(list_id)}


def segment_emails(run) -> set[str]:
    return {
        row["email"]
        for row in run.results["results"]
        if row.get("segment", "in") == "in" and row["reason"] != "forgotten"
    }


def user_updates_about(sandbox, email: str) -> int:
    return sum(
        1
        for entry in sandbox.request_log()
        if entry["endpoint"] == "users/update" and email in entry["emails"]
    )


# -- 1. bulk answers by userId ---------------------------------------------------------------


def test_bulk_by_user_id_matches_failures_named_by_email(job, sandbox, clean_seed):
    """Bulk by userId: failures Iterable names by email are matched to their rows."""
    profile_in_iterable(sandbox.base_url, ALICE_EMAIL, first_name="Someone else")
    sandbox.forget(JOSE_EMAIL)
    run = job.run("--mode", "bulk", ITERABLE_IDENTIFY_BY="userId")
    rows = run.by_customer()
    assert (rows[ALICE]["status"], rows[ALICE]["reason"]) == ("failed", "conflict")
    assert (rows[JOSE]["status"], rows[JOSE]["reason"]) == ("skipped", "forgotten")
    assert rows[XIAOMING]["status"] == "success"
    assert run.code == 1
    stored = {p["userId"] for p in sandbox.profiles()}
    assert str(ALICE) not in stored and str(JOSE) not in stored
    assert not [e for e in sandbox.events().values() if e.get("userId") in ("1", "2")]


def test_bulk_fails_rows_it_cannot_match_when_iterable_counts_more_failures(
    job, sandbox, clean_seed
):
    """failCount above the rows matched: the unmatched rows are not trusted as accepted."""
    sandbox.add_fault(
        "status",
        endpoint="users/bulkUpdate",
        status=200,
        body='{"successCount": 5, "failCount": 2, "failedUpdates": {}}',
    )
    run = job.run("--mode", "bulk")
    statuses = {row["status"] for row in run.results["results"]}
    assert statuses == {"failed"}
    assert {row["reason"] for row in run.results["results"]} == {"unmatched_failure"}
    assert run.code == 1
    again = job.run("--mode", "bulk")  # not outstanding: sent again, and accepted
    assert {row["status"] for row in again.results["results"]} == {"success"}
    assert again.code == 0


# -- 2, 3, 10. segment membership is decided for every row of Query 2 -------------------------


def test_a_list_turned_on_later_takes_customers_whose_only_change_is_an_event(
    job, sandbox, mariadb, clean_seed
):
    """The list mirror covers rows that send only an event."""
    job.run()
    new_view(mariadb, clean_seed, ALICE, 900)
    list_id = sandbox.create_list("Active pro customers")
    run = job.run(ITERABLE_LIST_ID=str(list_id))
    assert run.code == 0, run.stderr
    row = run.by_customer()[ALICE]
    assert row["user_update"] == {"skipped": "unchanged"}
    assert row["event_track"]["http_status"] == 200
    assert member_emails(sandbox, list_id) == segment_emails(run)
    calls = sandbox.stats()["total_requests"]
    job.run(ITERABLE_LIST_ID=str(list_id))
    assert sandbox.stats()["total_requests"] == calls


def test_rows_that_cannot_be_read_keep_their_customers_in_the_segment(
    job, sandbox, mariadb, clean_seed
):
    """A bad row is still a row of the segment: nobody leaves, nobody is unsubscribed."""
    list_id = sandbox.create_list("Active pro customers")
    first = job.run(ITERABLE_LIST_ID=str(list_id))
    members = member_emails(sandbox, list_id)
    assert len(members) == 7
    # A schema change that breaks every row: the view time arrives as text.
    sql(mariadb, clean_seed, "ALTER TABLE page_views MODIFY viewed_at VARCHAR(40) NOT NULL")
    second = job.run(ITERABLE_LIST_ID=str(list_id))
    assert member_emails(sandbox, list_id) == members
    ids = [row["customer_id"] for row in second.results["results"]]
    assert sorted(ids) == sorted(first.by_customer())  # one result row each
    assert {row["reason"] for row in second.results["results"]} == {"bad_row"}
    assert second.results["summary"]["left"] == 0


def test_a_returning_customer_is_back_in_the_segment(job, sandbox, mariadb, clean_seed):
    """A customer who went quiet and came back unchanged is in the segment again."""
    job.run()
    shift_views(mariadb, clean_seed, XIAOMING, -60)
    left = job.run().by_customer()[XIAOMING]
    assert (left["segment"], left["reason"]) == ("left", "unchanged")
    shift_views(mariadb, clean_seed, XIAOMING, 60)
    back = job.run().by_customer()[XIAOMING]
    assert (back["segment"], back["reason"]) == ("in", "unchanged")
    change_plan(mariadb, clean_seed, XIAOMING, "free")
    downgrade = job.run().by_customer()[XIAOMING]
    assert (downgrade["segment"], downgrade["status"]) == ("left", "success")
    assert sandbox.users()["xiaoming.wang@example.com"]["plan_type"] == "free"


# -- 4, 11. deletes ----------------------------------------------------------------------------


def test_deleting_a_user_iterable_no_longer_has_is_done(job, sandbox, mariadb, clean_seed):
    """A delete that finds nobody in Iterable is done, not a failure on every run."""
    job.run()
    requests.delete(
        f"{sandbox.base_url}/api/users/{JOSE_EMAIL}", headers=HEADERS, timeout=5
    ).raise_for_status()
    sql(mariadb, clean_seed, "DELETE FROM page_views WHERE customer_id = %s", JOSE)
    sql(mariadb, clean_seed, "DELETE FROM customers WHERE id = %s", JOSE)
    run = job.run(ON_DELETED_CUSTOMER="delete")
    row = run.by_customer()[JOSE]
    assert (row["status"], row["reason"]) == ("success", "left_deleted")
    assert run.code == 0
    calls = sandbox.stats()["total_requests"]
    assert job.run(ON_DELETED_CUSTOMER="delete").code == 0
    assert sandbox.stats()["total_requests"] == calls


def test_a_deleted_customer_who_comes_back_gets_their_events_again(
    job, sandbox, mariadb, clean_seed
):
    """Deleting a user in Iterable deletes their events: the state forgets them too."""
    job.run()
    sql(mariadb, clean_seed, "CREATE TABLE saved AS SELECT * FROM customers WHERE id = %s", JOSE)
    sql(mariadb, clean_seed, "CREATE TABLE views AS SELECT * FROM page_views WHERE customer_id = 2")
    sql(mariadb, clean_seed, "DELETE FROM page_views WHERE customer_id = %s", JOSE)
    sql(mariadb, clean_seed, "DELETE FROM customers WHERE id = %s", JOSE)
    job.run(ON_DELETED_CUSTOMER="delete")
    assert JOSE_EMAIL not in sandbox.users()
    sql(mariadb, clean_seed, "INSERT INTO customers SELECT * FROM saved")
    sql(mariadb, clean_seed, "INSERT INTO page_views SELECT * FROM views")
    back = job.run(ON_DELETED_CUSTOMER="delete").by_customer()[JOSE]
    assert back["status"] == "success"
    assert back["event_track"]["http_status"] == 200
    assert profile_with(sandbox, JOSE_EMAIL)["events"]


# -- 5. forgotten customers ---------------------------------------------------------------------


def test_a_forgotten_customer_who_changes_email_is_sent_under_the_new_one(
    job, sandbox, mariadb, clean_seed
):
    """updateEmail from a forgotten address: the profile goes in under the new email."""
    job.run()
    sandbox.forget(ALICE_EMAIL)
    sql(mariadb, clean_seed, "UPDATE customers SET email = %s WHERE id = %s", NEW_EMAIL, ALICE)
    row = job.run().by_customer()[ALICE]
    assert row["status"] == "success", row
    assert profile_with(sandbox, NEW_EMAIL)["events"]
    third = job.run().by_customer()[ALICE]
    assert (third["status"], third["reason"]) == ("skipped", "unchanged")


# -- 7. --full-refresh ---------------------------------------------------------------------------


def test_full_refresh_still_moves_emails_and_skips_forgotten_users(
    job, sandbox, mariadb, clean_seed
):
    """--full-refresh resends what was sent, but keeps email moves and forgotten users."""
    sandbox.forget(JOSE_EMAIL)
    job.run()
    sql(mariadb, clean_seed, "UPDATE customers SET email = %s WHERE id = %s", NEW_EMAIL, ALICE)
    before = user_updates_about(sandbox, JOSE_EMAIL)
    run = job.run("--full-refresh")
    rows = run.by_customer()
    assert rows[ALICE]["previous_email"] == ALICE_EMAIL
    assert [p["email"] for p in profiles_for(sandbox, ALICE, {ALICE_EMAIL, NEW_EMAIL})] == [
        NEW_EMAIL
    ]
    assert rows[JOSE]["reason"] == "forgotten"
    assert user_updates_about(sandbox, JOSE_EMAIL) == before


# -- 8, 14. outstanding failures ----------------------------------------------------------------


def refuse_profile_of(sandbox, email: str) -> None:
    sandbox.add_fault(
        "status",
        endpoint="users/update",
        email=email,
        status=400,
        times=None,
        body='{"msg": "refused", "code": "GenericError", "params": null}',
    )


def test_a_refused_profile_does_not_alert_again_on_a_new_page_view(
    job, sandbox, mariadb, clean_seed
):
    """The outstanding rule fingerprints the part that failed: the profile, not the event."""
    refuse_profile_of(sandbox, ALICE_EMAIL)
    first = job.run()
    assert first.code == 1
    new_view(mariadb, clean_seed, ALICE, 901)
    second = job.run()
    row = second.by_customer()[ALICE]
    assert (row["status"], row["outstanding"]) == ("failed", True), row
    assert second.code == 0


def test_bulk_not_found_users_are_retried_not_outstanding(job, sandbox, clean_seed):
    """notFound in a bulk answer is transient: the row is sent again on the next run."""
    sandbox.add_fault(
        "status",
        endpoint="events/trackBulk",
        status=200,
        body=(
            '{"successCount": 6, "failCount": 1, '
            f'"failedUpdates": {{"notFoundEmails": ["{ALICE_EMAIL}"]}}}}'
        ),
    )
    first = job.run("--mode", "bulk")
    row = first.by_customer()[ALICE]
    assert row["status"] == "failed" and not row.get("outstanding")
    second = job.run("--mode", "bulk").by_customer()[ALICE]
    assert second["status"] == "success"
    assert second["event_track"]["http_status"] == 200


def test_retry_outstanding_sends_refused_rows_once_more(job, sandbox, clean_seed):
    """--retry-outstanding resends rows refused for good, after a fix in Iterable."""
    refuse_profile_of(sandbox, ALICE_EMAIL)
    job.run()
    second = job.run()
    assert second.by_customer()[ALICE]["outstanding"] is True
    assert "--retry-outstanding" in second.stdout
    sandbox.clear_faults()
    third = job.run("--retry-outstanding")
    assert third.by_customer()[ALICE]["status"] == "success"
    assert ALICE_EMAIL in sandbox.users()
    assert third.code == 0


# -- 12. the first call's gate, whatever the endpoint --------------------------------------------


@pytest.mark.parametrize("problem", ["missing list", "rejected key"])
def test_a_run_of_list_calls_only_stops_on_a_missing_list_or_a_rejected_key(
    job, sandbox, clean_seed, problem
):
    """The gate stands before every first call, list calls included."""
    job.run()
    if problem == "missing list":
        run = job.run(ITERABLE_LIST_ID="999")
        expected = "ITERABLE_LIST_ID 999 is not a list of this Iterable project"
    else:
        list_id = sandbox.create_list("Active pro customers")
        sandbox.set_api_keys(["another-key"])
        run = job.run(ITERABLE_LIST_ID=str(list_id))
        expected = "API key"
    assert run.code == 3, run.stdout + run.stderr
    assert expected in run.stderr.strip().splitlines()[-1]
    assert "Traceback" not in run.stderr


# -- 9. updateEmail is not retried blind --------------------------------------------------------


def test_an_email_move_whose_answer_was_lost_is_looked_up_not_resent(
    job, sandbox, mariadb, clean_seed
):
    """updateEmail applied but answered 503: the job finds the move done, sends no second one."""
    first = job.run()
    old_events = set(profile_with(sandbox, ALICE_EMAIL)["events"])
    sandbox.add_fault("status", endpoint="users/updateEmail", status=503, apply_first=True)
    sql(mariadb, clean_seed, "UPDATE customers SET email = %s WHERE id = %s", NEW_EMAIL, ALICE)
    row = job.run().by_customer()[ALICE]
    assert first.code == 0
    assert row["status"] == "success"
    assert not row.get("warnings"), row["warnings"]
    assert sandbox.request_count("users/updateEmail") == 1
    assert old_events <= set(profile_with(sandbox, NEW_EMAIL)["events"])
    assert ALICE_EMAIL not in sandbox.users()


def test_an_email_move_with_no_answer_and_nothing_moved_is_tried_again_next_run(
    job, sandbox, mariadb, clean_seed
):
    """updateEmail answered 503 without moving: the row fails and the next run moves it."""
    job.run()
    sandbox.add_fault("status", endpoint="users/updateEmail", status=503)
    sql(mariadb, clean_seed, "UPDATE customers SET email = %s WHERE id = %s", NEW_EMAIL, ALICE)
    failed = job.run()
    assert failed.by_customer()[ALICE]["status"] == "failed"
    assert ALICE_EMAIL in sandbox.users() and NEW_EMAIL not in sandbox.users()
    moved = job.run().by_customer()[ALICE]
    assert (moved["status"], moved["previous_email"]) == ("success", ALICE_EMAIL)
    assert NEW_EMAIL in sandbox.users() and ALICE_EMAIL not in sandbox.users()


# -- 6. an upgrade from the previous release -----------------------------------------------------

PREVIOUS_RELEASE = "e092acc"  # the last commit with the schema 1 sync state


@pytest.fixture
def previous_release(job, tmp_path):
    """The previous release's main.py, unpacked from this repository's history."""
    job.sqlite_only()
    import subprocess

    from tests.support.job import PROJECT_ROOT, Job

    found = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"],
        capture_output=True,
    )
    if found.returncode != 0:
        pytest.skip(f"commit {PREVIOUS_RELEASE} is not in this clone's history")
    unpacked = tmp_path / "previous_release"
    unpacked.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "archive", PREVIOUS_RELEASE],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(unpacked)], input=archive.stdout, check=True)
    return Job(job.workdir, job.env, project=unpacked)


def test_an_upgrade_keeps_one_profile_when_an_email_changes(
    job, previous_release, sandbox, mariadb, clean_seed
):
    """A state the previous release wrote: the emails come back from its results files."""
    assert previous_release.run().code == 0
    with sqlite3.connect(job.state_file) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "1",
        )
    sql(mariadb, clean_seed, "UPDATE customers SET email = %s WHERE id = %s", NEW_EMAIL, ALICE)
    run = job.run()
    assert run.code == 0, run.stderr
    row = run.by_customer()[ALICE]
    assert (row["status"], row["previous_email"]) == ("success", ALICE_EMAIL)
    assert [p["email"] for p in profiles_for(sandbox, ALICE, {ALICE_EMAIL, NEW_EMAIL})] == [
        NEW_EMAIL
    ]
    assert run.results["run"]["warnings"] == []


def test_an_upgrade_without_results_files_says_which_emails_it_does_not_know(
    job, previous_release, sandbox, clean_seed
):
    """Where no results file tells a customer's email, the run says so, once."""
    assert previous_release.run().code == 0
    for results_file in job.results_dir.glob("*.json"):
        results_file.unlink()
    run = job.run()
    [warning] = run.results["run"]["warnings"]
    assert "no results file" in warning and "of 7 of its customers" in warning
    assert "second profile" in run.stderr + run.stdout
    assert job.run().results["run"]["warnings"] == []  # said once


def test_a_failed_unsubscribe_is_made_up_and_shown_next_run(job, sandbox, mariadb, clean_seed):
    """A leaver whose unsubscribe failed comes off the list next run, with a row saying so."""
    list_id = sandbox.create_list("Active pro customers")
    env = {"ITERABLE_LIST_ID": str(list_id)}
    job.run(**env)
    sql(mariadb, clean_seed, "UPDATE customers SET plan_type = 'free' WHERE id = %s", XIAOMING)
    sandbox.add_fault("status", endpoint="lists/unsubscribe", status=400, times=None)
    job.run(**env)
    assert "xiaoming.wang@example.com" in member_emails(sandbox, list_id)
    sandbox.clear_faults()
    run = job.run(**env)
    row = run.by_customer()[XIAOMING]
    assert (row["segment"], row["reason"], row["list"]) == ("out", "off_list", "unsubscribed")
    assert run.results["summary"]["changes"]["list_unsubscribed"] == 1
    assert run.results["summary"]["left"] == 0
    assert "xiaoming.wang@example.com" not in member_emails(sandbox, list_id)
    assert f"list {list_id}: -1 unsubscribed" in run.stdout
