"""`python main.py --check`: every check, its one-line report, and exit codes; sends nothing.

Exit codes: 0 when every check passes, 3 when any check fails (the job could not run, as
for an aborted run), 2 for bad configuration (caught before any check runs).
"""

from __future__ import annotations

import re

import pytest

from preflight import describe_plan
from sandbox import DEFAULT_API_KEY as API_KEY
from tests.support.waiting import wait_until

CHECK_FAILED = 3


def lines(run) -> list[str]:
    return run.stdout.splitlines()


def line(run, prefix: str) -> str:
    found = [text for text in lines(run) if text.startswith(prefix)]
    assert len(found) == 1, run.stdout
    return found[0]


def assert_wrote_nothing(job, sandbox) -> None:
    """A check changes nothing: no profile, no event, no results, no sync state."""
    assert sandbox.users() == {} and sandbox.events() == {}
    endpoints = set(sandbox.stats()["by_endpoint"])
    assert endpoints <= {"users/getByEmail", "users/getFields"}, endpoints
    assert list(job.results_dir.iterdir()) == []
    assert not job.state_file.exists()


def test_all_checks_pass(job, sandbox, seeded_db):
    run = job.run("--check")
    assert run.code == 0, run.stdout + run.stderr
    assert run.stderr == ""
    assert lines(run)[0] == "configuration: ok"
    assert line(run, "database: ok: connected") == (
        f"database: ok: connected to database {seeded_db.name} "
        f"over TCP {seeded_db.host}:{seeded_db.port}"
    )
    # Query 2 with LIMIT 1: the first qualifying customer, email masked.
    assert line(run, "database: ok: Query 2 runs") == (
        "database: ok: Query 2 runs; first row: customer 1 (a***@example.com)"
    )
    # The row count is the optimizer's estimate of the 15-row table, which InnoDB's
    # sampled statistics give as 15 or 16.
    assert re.fullmatch(
        r"database: ok: plan: customers: read whole, about 1[56] rows \(a full scan, as "
        r"expected on a small table or when most customers are on the plan\); page views: "
        r"each customer's newest view in the window by one dive into "
        r"idx_page_views_customer_viewed_id; each newest view read by primary key",
        line(run, "database: ok: plan:"),
    )
    assert (
        line(run, "iterable: ok:")
        == f"iterable: ok: Iterable at {sandbox.base_url} accepts the key"
    )
    assert re.fullmatch(
        r"database: ok: newest page view: \d{4}-\d\d-\d\d \d\d:\d\d UTC",
        line(run, "database: ok: newest page view"),
    )
    assert line(run, "fields: ok:") == (
        "fields: ok: the fields the job sends are text in Iterable or not there yet "
        "(first_name, last_name, plan_type, recent_page_view)"
    )
    assert lines(run)[-1] == "all checks passed"
    assert len(lines(run)) == 8  # short
    assert sandbox.request_count("users/getByEmail") == 1
    assert sandbox.request_count("users/getFields") == 1
    assert_wrote_nothing(job, sandbox)


def test_no_qualifying_rows_is_not_a_failure(job, sandbox, mariadb, seeded_db):
    # The plan has customers, none of them active lately (a plan no customer has is a
    # failure: test_bad_rows.py).
    mariadb.execute("DELETE FROM page_views", database=seeded_db.name)
    run = job.run("--check")
    assert run.code == 0
    assert "database: ok: Query 2 runs; no qualifying rows" in lines(run)


def test_a_rejected_key_fails_the_check(job, sandbox):
    run = job.run("--check", ITERABLE_API_KEY="not-the-key-42")
    assert run.code == CHECK_FAILED
    assert line(run, "iterable: FAILED:") == (
        "iterable: FAILED: Iterable rejected the API key: HTTP 401 BadApiKey Invalid API key"
    )
    assert line(run, "database: ok: connected")  # the other checks still ran
    assert line(run, "fields:") == "fields: not checked: Iterable must accept the key first"
    assert lines(run)[-1] == "some checks failed"
    assert "not-the-key-42" not in run.stdout + run.stderr + job.log_file.read_text()
    assert_wrote_nothing(job, sandbox)


@pytest.mark.parametrize(
    ("base_url", "why"),
    [
        ("http://127.0.0.1:1", "connection refused"),
        ("https://no-such-host.invalid", "name resolution failed"),
    ],
)
def test_an_unreachable_iterable_fails_the_check_in_a_sentence(job, sandbox, base_url, why):
    run = job.run("--check", ITERABLE_BASE_URL=base_url, MAX_ATTEMPTS="1")
    assert run.code == CHECK_FAILED
    assert line(run, "iterable: FAILED:") == f"iterable: FAILED: cannot reach {base_url}: {why}"
    assert "Traceback" not in run.stdout + run.stderr


def test_a_slow_iterable_fails_the_check_saying_how_long_it_waited(job, sandbox):
    sandbox.add_fault("delay", endpoint="users/getByEmail", delay=1.0, times=1)
    run = job.run("--check", REQUEST_TIMEOUT_SECONDS="0.5")
    assert run.code == CHECK_FAILED
    assert line(run, "iterable: FAILED:") == (
        f"iterable: FAILED: cannot reach {sandbox.base_url}: timed out after 0.5s"
    )
    # The sandbox finishes the slow request now, not in the middle of the next test.
    wait_until(lambda: sandbox.request_count(status="client_gone") == 1, 10, "the slow request")


def test_a_server_error_fails_the_check(job, sandbox):
    sandbox.add_fault("status", endpoint="users/getByEmail", status=503, times=None)
    run = job.run("--check", MAX_ATTEMPTS="1")
    assert run.code == CHECK_FAILED
    assert line(run, "iterable: FAILED:") == (
        f"iterable: FAILED: cannot reach {sandbox.base_url}: HTTP 503"
    )


def test_an_unreachable_database_fails_the_check(job, sandbox):
    run = job.run("--check", MYSQL_PORT="1")
    assert run.code == CHECK_FAILED
    assert line(run, "database: FAILED:").startswith(
        "database: FAILED: cannot reach MySQL at 127.0.0.1:1"
    )
    assert line(run, "iterable: ok:")  # reported independently
    assert "Traceback" not in run.stdout + run.stderr


def test_a_wrong_password_fails_the_check_without_echoing_it(job, sandbox):
    run = job.run("--check", MYSQL_PASSWORD="Wrong-pw-987")
    assert run.code == CHECK_FAILED
    assert line(run, "database: FAILED:").startswith("database: FAILED: MySQL refused user")
    assert "Wrong-pw-987" not in run.stdout + run.stderr + job.log_file.read_text()


def test_a_missing_table_fails_the_check(job, sandbox, mariadb, seeded_db):
    mariadb.execute("DROP TABLE page_views", database=seeded_db.name)
    run = job.run("--check")
    assert run.code == CHECK_FAILED
    assert line(run, "database: FAILED:").startswith(
        "database: FAILED: a table Query 2 needs is missing"
    )


def test_a_user_without_select_on_a_table_fails_the_check(job, sandbox, seeded_db, app_user):
    narrow = app_user(seeded_db, tables=("customers",))
    run = job.run("--check", MYSQL_USER=narrow.user, MYSQL_PASSWORD=narrow.password)
    assert run.code == CHECK_FAILED
    assert f"database: FAILED: MySQL user '{narrow.user}' lacks SELECT" in run.stdout


def test_bad_configuration_is_exit_two_before_any_check(job, sandbox):
    # The rules themselves are tested in-process (test_settings.py); here, what --check does.
    run = job.run("--check", MYSQL_DATABASE=None)
    assert run.code == 2
    assert run.stdout == ""  # no check ran
    assert run.stderr == "error: configuration: MYSQL_DATABASE is not set\n"
    assert sandbox.stats()["total_requests"] == 0


def test_dry_run_check_needs_no_key_and_skips_iterable(job, sandbox):
    run = job.run("--check", "--dry-run", ITERABLE_API_KEY=None)
    assert run.code == 0, run.stdout
    assert not any(text.startswith("iterable:") for text in lines(run))
    assert sandbox.stats()["total_requests"] == 0


def test_the_key_never_appears_in_the_report(job, sandbox):
    run = job.run("--check", "--log-level", "DEBUG")
    assert run.code == 0
    assert API_KEY not in run.stdout + run.stderr + job.log_file.read_text()


def test_the_plan_says_which_index_to_create_when_it_is_missing(job, sandbox, mariadb, seeded_db):
    # A database made before the per-customer index: customer_id alone (which the foreign
    # key needs) leaves each customer's views to be sorted.
    mariadb.execute(
        "CREATE INDEX idx_page_views_customer ON page_views (customer_id)", database=seeded_db.name
    )
    mariadb.execute(
        "DROP INDEX idx_page_views_customer_viewed_id ON page_views", database=seeded_db.name
    )
    run = job.run("--check")
    assert run.code == 0, run.stdout + run.stderr
    plan = line(run, "database: ok: plan:")
    assert (
        "page views: each customer's views found through idx_page_views_customer and sorted, "
        "slower as views grow; create the per-customer index: CREATE INDEX "
        "idx_page_views_customer_viewed_id ON page_views (customer_id, viewed_at, id)"
    ) in plan
    assert_wrote_nothing(job, sandbox)


MYSQL8_PLAN = [  # the CTE materialised: MySQL 8 does not merge a select-list subquery
    {"id": 1, "select_type": "PRIMARY", "table": "<derived2>", "type": "ALL", "rows": 90000},
    {"id": 1, "select_type": "PRIMARY", "table": "pv", "type": "eq_ref", "key": "PRIMARY"},
    {"id": 2, "select_type": "DERIVED", "table": "c", "type": "ref", "rows": 90000,
     "key": "idx_customers_plan_type_id", "ref": "const"},
    {"id": 3, "select_type": "DEPENDENT SUBQUERY", "table": "pv", "type": "ref", "rows": 14,
     "key": "idx_page_views_customer_viewed_id", "ref": "shop.c.id",
     "Extra": "Using where; Backward index scan; Using index"},
]  # fmt: skip
SMALL_TABLE_SCAN = [
    {"select_type": "PRIMARY", "table": "c", "type": "ALL", "rows": "12"},
    {"select_type": "PRIMARY", "table": "pv", "type": "eq_ref", "key": "PRIMARY"},
    {"select_type": "DEPENDENT SUBQUERY", "table": "pv", "type": "ALL", "rows": "30"},
]
LARGE_TABLE_SCAN = [*SMALL_TABLE_SCAN[:2], dict(SMALL_TABLE_SCAN[2], rows="3000000")]


@pytest.mark.parametrize(
    ("plan", "words"),
    [
        (
            MYSQL8_PLAN,
            "customers: those on the plan, through idx_customers_plan_type_id; page views: "
            "each customer's newest view in the window by one dive into "
            "idx_page_views_customer_viewed_id; each newest view read by primary key",
        ),
        (
            SMALL_TABLE_SCAN,
            "customers: read whole, about 12 rows (a full scan, as expected on a small table "
            "or when most customers are on the plan); page views: read whole for each "
            "customer, about 30 rows (a full scan, as expected on a table this small); each "
            "newest view read by primary key",
        ),
        (
            LARGE_TABLE_SCAN,
            "customers: read whole, about 12 rows (a full scan, as expected on a small table "
            "or when most customers are on the plan); page views: each customer's views "
            "scanned, slower as views grow; create the per-customer index: CREATE INDEX "
            "idx_page_views_customer_viewed_id ON page_views (customer_id, viewed_at, id); "
            "each newest view read by primary key",
        ),
    ],
)
def test_the_plan_in_words(plan, words):
    assert describe_plan(plan) == words
