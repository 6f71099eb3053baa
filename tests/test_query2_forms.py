"""The job's Query 2 (query2_per_customer) against the seed's (query2), row for row.

Both forms run on one connection, one after the other, on the seed data, on a data set
built for the cases where they could part (ties, ids against time, the window's edges),
and on tables hypothesis generates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db_connection import SYNC_QUERY, load_query
from devtools.mariadb_server import Database, ServerHandle
from tests.test_sql import BIND_SQL, QUERY2_COLUMNS

REFERENCE = "query2"

Rows = list[tuple[Any, ...]]


def both_forms(db: Database, plan_type: str = "pro", lookback_days: int = 7) -> tuple[Rows, Rows]:
    """(the reference's rows, the job's rows), each with its column names checked."""
    conn = db.connect()
    try:
        cursor = conn.cursor()
        cursor.execute(BIND_SQL, (plan_type, lookback_days))
        results = []
        for name in (REFERENCE, SYNC_QUERY):
            cursor.execute(load_query(name))
            rows = cursor.fetchall()
            assert list(cursor.column_names) == QUERY2_COLUMNS, name
            results.append(rows)
        return results[0], results[1]
    finally:
        conn.close()


def assert_same_rows(db: Database, plan_type: str = "pro", lookback_days: int = 7) -> Rows:
    reference, job = both_forms(db, plan_type, lookback_days)
    assert job == reference
    return job


def winners(rows: Rows) -> dict[int, int]:
    return {row[0]: row[5] for row in rows}


def test_the_job_runs_the_per_customer_form() -> None:
    assert SYNC_QUERY == "query2_per_customer"
    assert load_query(SYNC_QUERY) != load_query(REFERENCE)


@pytest.mark.parametrize(
    ("plan_type", "lookback_days"),
    [
        ("pro", 7),
        ("pro", 30),
        ("pro", 2),
        ("PRO", 7),
        ("enterprise", 7),
        ("enterprise", 30),
        ("free", 7),
        ("basic", 30),
        ("no-such-plan", 7),
    ],
)
def test_both_forms_agree_on_the_seed(
    seeded_db: Database, plan_type: str, lookback_days: int
) -> None:
    assert_same_rows(seeded_db, plan_type, lookback_days)


# -- a data set for the cases where the forms could part ----------------------------------

# Customer id, plan; then page views: id, customer id, device, location, seconds before @t0.
EDGE_CUSTOMERS = [
    (1, "pro"),  # three views in one second, the newest; the highest id wins
    (2, "pro"),  # the newest view has the customer's lowest id
    (3, "pro"),  # the newest view has NULL device and location
    (4, "pro"),  # the newest view 5 minutes inside the window, an older one outside
    (5, "pro"),  # the only view a second outside the window
    (6, "pro"),  # no views at all
    (7, "free"),  # recent views, another plan
    (8, "basic"),  # recent views, another plan
    (9, "pro"),  # an older view outside the window has a higher id than the newest
    (10, "Pro"),  # the plan in other case: the column's collation ignores it
    (11, "pro"),  # two views tied in the second before the newest, which has a lower id
]
DAY = 86_400
WINDOW = 7 * DAY
EDGE_VIEWS = [
    (100, 1, "desktop", "Oslo, NO", 7_200),
    (101, 1, "mobile", "Oslo, NO", 3_600),
    (103, 1, "tablet", "Oslo, NO", 3_600),
    (102, 1, "desktop", None, 3_600),
    (104, 2, "mobile", "Lyon, FR", 600),
    (105, 2, "desktop", "Lyon, FR", DAY),
    (106, 2, "desktop", "Lyon, FR", 2 * DAY),
    (107, 3, "desktop", "Leeds, GB", 3 * DAY),
    (108, 3, None, None, 3_600),
    (109, 4, "desktop", "Bergen, NO", WINDOW - 300),
    (110, 4, "desktop", "Bergen, NO", WINDOW + 3_600),
    (111, 5, "mobile", "Austin, US", WINDOW + 1),
    (112, 7, "mobile", "Madrid, ES", 60),
    (113, 8, "desktop", None, 120),
    (120, 9, "desktop", "Dublin, IE", 8 * DAY),
    (114, 9, "mobile", "Dublin, IE", DAY),
    (115, 10, "desktop", "Austin, US", 1_800),
    (116, 11, "desktop", "Zürich, CH", 61),
    (117, 11, "desktop", "Zürich, CH", 61),
    (99, 11, None, "Zürich, CH", 60),
]
EDGE_WINNERS = {1: 103, 2: 104, 3: 108, 4: 109, 9: 114, 10: 115, 11: 99}


@pytest.fixture
def fresh_db(mariadb: ServerHandle, seeded_db: Database) -> Database:
    """The app's schema in a new database, without the seed rows."""
    mariadb.execute("DELETE FROM page_views", database=seeded_db.name)
    mariadb.execute("DELETE FROM customers", database=seeded_db.name)
    return seeded_db


def fill(
    db: Database,
    customers: Sequence[tuple[int, str]],
    views: Sequence[tuple[int, int, str | None, str | None, int]],
) -> None:
    """Replace both tables' rows; view times are seconds before one UTC instant."""
    conn = db.connect()
    try:
        cursor = conn.cursor()
        cursor.execute("DELETE FROM page_views")
        cursor.execute("DELETE FROM customers")
        cursor.execute("SET @t0 = UTC_TIMESTAMP()")
        cursor.executemany(
            "INSERT INTO customers (id, email, first_name, last_name, plan_type) "
            "VALUES (%s, %s, %s, %s, %s)",
            [(i, f"c{i}@example.com", f"First{i}", None, plan) for i, plan in customers],
        )
        cursor.executemany(
            "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
            "VALUES (%s, %s, %s, %s, %s, @t0 - INTERVAL %s SECOND)",
            [(v, c, f"/page/{v}", device, place, ago) for v, c, device, place, ago in views],
        )
        conn.commit()
    finally:
        conn.close()


def test_both_forms_agree_where_they_could_part(fresh_db: Database) -> None:
    fill(fresh_db, EDGE_CUSTOMERS, EDGE_VIEWS)
    rows = assert_same_rows(fresh_db)
    assert winners(rows) == EDGE_WINNERS
    assert [row[0] for row in rows] == sorted(EDGE_WINNERS)
    by_customer = {row[0]: row for row in rows}
    assert by_customer[3][7:9] == (None, None)
    assert by_customer[10][4] == "Pro"
    assert winners(assert_same_rows(fresh_db, "free")) == {7: 112}
    assert winners(assert_same_rows(fresh_db, "pro", 30)) == {**EDGE_WINNERS, 5: 111}


# -- generated tables ---------------------------------------------------------------------

PLANS = ("pro", "free", "basic")
# Half-hour marks over 9 days, a quarter of an hour past the mark: the window's edge is
# never within 15 minutes of a view, so the seconds between the two queries cannot move a
# view across it.
AGES = st.integers(min_value=0, max_value=9 * 48).map(lambda halves: halves * 1_800 + 900)


@st.composite
def tables(draw: st.DrawFn) -> tuple[int, list[tuple[int, str]], list[tuple[Any, ...]]]:
    """A window, customers on a few plans, and views with ids in any order against their
    times: many of them within the hour, so that ties in one second are common, or
    within the hour either side of the window's edge."""
    lookback_days = draw(st.sampled_from([1, 7]))
    edge = lookback_days * DAY
    near = st.sampled_from([900, 2_700, edge - 2_700, edge - 900, edge + 900, edge + 2_700])
    plans = draw(st.lists(st.sampled_from(PLANS), min_size=1, max_size=8))
    customers = [(i, plan) for i, plan in enumerate(plans, start=1)]
    drawn = draw(
        st.lists(
            st.tuples(
                st.integers(min_value=1, max_value=len(customers)),
                st.sampled_from(["desktop", None]),
                st.sampled_from(["Oslo, NO", None]),
                st.one_of(near, AGES),
            ),
            max_size=30,
        )
    )
    ids = draw(st.permutations(range(1, len(drawn) + 1)))
    views = [(ids[n], *view) for n, view in enumerate(drawn)]
    return lookback_days, customers, views


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=tables())
def test_both_forms_agree_on_generated_tables(
    fresh_db: Database, data: tuple[int, list[tuple[int, str]], list[tuple[Any, ...]]]
) -> None:
    lookback_days, customers, views = data
    fill(fresh_db, customers, views)
    assert_same_rows(fresh_db, "pro", lookback_days)


# -- the plan -----------------------------------------------------------------------------


def test_the_job_form_dives_into_the_per_customer_index(seeded_db: Database) -> None:
    conn = seeded_db.connect()
    try:
        cursor = conn.cursor(dictionary=True)
        cursor.execute(BIND_SQL, ("pro", 7))
        cursor.execute("EXPLAIN " + load_query(SYNC_QUERY))
        plan = cursor.fetchall()
    finally:
        conn.close()
    dives = [row for row in plan if row["select_type"] == "DEPENDENT SUBQUERY"]
    assert [row["key"] for row in dives] == ["idx_page_views_customer_viewed_id"], plan
    assert not any("filesort" in (row["Extra"] or "") for row in plan), plan
