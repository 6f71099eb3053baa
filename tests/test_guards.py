"""Guards: a stalled source, a half-loaded table, a lost state or a state of another Iterable
project never turns into damage in Iterable.

Each test runs `main.py` against MariaDB and the sandbox as a user would, and checks the
exit code, the line the user sees and what the sandbox holds.
"""

from __future__ import annotations

import pytest

from sandbox import SandboxServer
from tests.support.data import sql

GUARD_PLAN = "guard"


@pytest.fixture
def sixty(mariadb, seeded_db):
    """60 customers on a plan of their own, each with a page view an hour ago."""
    for customer_id in range(1001, 1061):
        sql(
            mariadb,
            seeded_db,
            "INSERT INTO customers (id, email, first_name, last_name, plan_type, created_at) "
            "VALUES (%s, %s, 'G', 'Uard', %s, UTC_TIMESTAMP())",
            customer_id,
            f"guard{customer_id}@example.com",
            GUARD_PLAN,
        )
        sql(
            mariadb,
            seeded_db,
            "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
            "VALUES (%s, %s, '/app', 'desktop', 'Oslo', UTC_TIMESTAMP() - INTERVAL 1 HOUR)",
            customer_id * 10,
            customer_id,
        )
    return seeded_db


def age_every_view(mariadb, database, days: int) -> None:
    sql(mariadb, database, f"UPDATE page_views SET viewed_at = viewed_at - INTERVAL {days} DAY")


def members(sandbox, list_id: int) -> set[str]:
    return {m["email"] for m in sandbox.list_members(list_id)}


def last_line(run) -> str:
    return run.stderr.strip().splitlines()[-1]


# -- 1. the mass-leave guard --------------------------------------------------------------------


def test_a_stalled_page_views_pipeline_unsubscribes_nobody(job, sandbox, mariadb, clean_seed):
    list_id = sandbox.create_list("Active pro customers")
    env = {"ITERABLE_LIST_ID": str(list_id)}
    assert job.run(**env).code == 0
    listed = members(sandbox, list_id)
    assert len(listed) == 7
    age_every_view(mariadb, clean_seed, 9)
    writes = sandbox.stats()["total_requests"]
    run = job.run(**env)
    assert run.code == 3, run.stdout + run.stderr
    line = last_line(run)
    assert "7 of 7 customers in the segment would leave" in line
    assert "newest page view" in line and "UTC" in line
    assert "python main.py --allow-mass-leave" in line
    assert "Traceback" not in run.stderr
    rows = run.results["results"]
    assert {(r["status"], r["reason"], r["segment"]) for r in rows} == {
        ("skipped", "leave_guard", "left")
    }
    assert len(rows) == 7
    assert members(sandbox, list_id) == listed
    assert sandbox.request_count("lists/unsubscribe") == 0
    assert sandbox.request_count("users/update") == 7  # the first run's only
    assert sandbox.stats()["total_requests"] - writes <= 1  # at most the list check
    # The stale source is named, on the console and in the results file.
    stale = [w for w in run.results["run"]["warnings"] if "newest page view is 9 days old" in w]
    assert stale and "is the pipeline that loads page_views stopped?" in stale[0]
    assert "newest page view is 9 days old" in run.stderr
    # The pipeline catches up: nothing to send.
    age_every_view(mariadb, clean_seed, -9)
    calls = sandbox.stats()["total_requests"]
    back = job.run(**env)
    assert back.code == 0, back.stderr
    assert sandbox.stats()["total_requests"] == calls


def test_allow_mass_leave_lets_the_real_change_through_once(job, sandbox, mariadb, clean_seed):
    list_id = sandbox.create_list("Active pro customers")
    env = {"ITERABLE_LIST_ID": str(list_id)}
    job.run(**env)
    age_every_view(mariadb, clean_seed, 9)
    assert job.run(**env).code == 3
    allowed = job.run("--allow-mass-leave", **env)
    assert allowed.code == 0, allowed.stderr
    assert members(sandbox, list_id) == set()
    calls = sandbox.stats()["total_requests"]
    after = job.run(**env)
    assert after.code == 0
    assert sandbox.stats()["total_requests"] == calls


def test_a_half_loaded_customers_table_deletes_no_profile(job, sandbox, mariadb, sixty):
    list_id = sandbox.create_list("Guard")
    env = {
        "PLAN_TYPE": GUARD_PLAN,
        "ITERABLE_LIST_ID": str(list_id),
        "ON_DELETED_CUSTOMER": "delete",
    }
    assert job.run(**env).code == 0
    assert len(members(sandbox, list_id)) == 60
    sql(mariadb, sixty, "CREATE TABLE saved_customers AS SELECT * FROM customers WHERE id > 1010")
    sql(
        mariadb,
        sixty,
        "CREATE TABLE saved_views AS SELECT * FROM page_views WHERE customer_id > 1010",
    )
    sql(mariadb, sixty, "DELETE FROM customers WHERE id > 1010")  # the views go with them
    run = job.run(**env)
    assert run.code == 3
    assert "50 of 60 customers in the segment would leave" in last_line(run)
    assert sandbox.deleted() == []
    assert sandbox.request_count("lists/unsubscribe") == 0
    assert len([p for p in sandbox.profiles() if p["email"].startswith("guard")]) == 60
    assert len(members(sandbox, list_id)) == 60
    sql(mariadb, sixty, "INSERT INTO customers SELECT * FROM saved_customers")
    sql(mariadb, sixty, "INSERT INTO page_views SELECT * FROM saved_views")
    calls = sandbox.stats()["total_requests"]
    back = job.run(**env)
    assert back.code == 0, back.stderr
    assert sandbox.stats()["total_requests"] == calls


def test_a_few_downgrades_pass_the_guard(job, sandbox, mariadb, sixty):
    env = {"PLAN_TYPE": GUARD_PLAN}
    job.run(**env)
    sql(mariadb, sixty, "UPDATE customers SET plan_type = 'free' WHERE id IN (1001, 1002, 1003)")
    run = job.run(**env)
    assert run.code == 0, run.stderr
    assert run.results["summary"]["left"] == 3
    assert sandbox.users()["guard1001@example.com"]["plan_type"] == "free"


def test_the_dry_run_shows_the_guards_verdict(job, sandbox, mariadb, clean_seed):
    job.run()
    age_every_view(mariadb, clean_seed, 9)
    run = job.run("--dry-run")
    assert "7 of 7 customers in the segment would leave" in run.stdout + run.stderr
    assert {r["reason"] for r in run.results["results"]} == {"leave_guard"}


def test_check_shows_the_newest_page_view(job, mariadb, clean_seed):
    check = job.run("--check")
    assert "newest page view:" in check.stdout
    age_every_view(mariadb, clean_seed, 9)
    stale = job.run("--check")
    assert "newest page view is 9 days old" in stale.stdout + stale.stderr


# -- 6. a lost state -----------------------------------------------------------------------------


def test_a_lost_state_is_noticed(job, sandbox, clean_seed):
    job.run()
    job.state_file.unlink()
    run = job.run()
    [warning] = [w for w in run.results["run"]["warnings"] if "is new, but earlier runs" in w]
    assert str(job.state_file) in warning and "SYNC_STATE_PATH" in warning
    assert "second profiles" in warning and "who left" in warning
    assert "is new, but earlier runs wrote results here" in run.stderr
    assert not [w for w in job.run().results["run"]["warnings"] if "is new" in w]


# -- 7. a state belongs to one Iterable project ----------------------------------------------------


@pytest.fixture
def other_project():
    with SandboxServer(latency=0.0) as server:
        yield server


def test_a_state_pointed_at_another_project_stops_before_sending(
    job, sandbox, other_project, clean_seed
):
    job.run()
    elsewhere = {"ITERABLE_BASE_URL": other_project.base_url}
    run = job.run(**elsewhere)
    assert run.code == 2, run.stdout + run.stderr
    line = last_line(run)
    assert str(job.state_file) in line
    assert "SYNC_STATE_PATH" in line and "--full-refresh" in line
    assert other_project.users() == {}
    assert other_project.request_count("users/update") == 0
    refreshed = job.run("--full-refresh", **elsewhere)
    assert refreshed.code == 0, refreshed.stderr
    assert len(other_project.users()) == 7
    calls = other_project.stats()["total_requests"]
    assert job.run(**elsewhere).code == 0
    assert other_project.stats()["total_requests"] == calls


def test_a_rotated_key_is_the_same_project(job, sandbox, clean_seed):
    job.run()
    sandbox.set_api_keys(["sandbox-key", "rotated-key"])
    calls = sandbox.request_count("users/update")
    run = job.run(ITERABLE_API_KEY="rotated-key")
    assert run.code == 0, run.stderr
    assert sandbox.request_count("users/update") == calls
    assert "rotated-key" not in job.state_file.read_bytes().decode("latin-1")


# -- 8. words that match what happened -----------------------------------------------------------


def test_interrupted_rows_are_not_called_failures(job, sandbox, clean_seed):
    sandbox.configure({"api_keys": ["another-key"]})
    run = job.run("--mode", "bulk")
    summary = run.results["summary"]
    assert run.code == 3
    assert summary["interrupted"] == 7
    assert "7 interrupted (sent again next run)" in run.stdout
    assert summary["failed"] == 0
