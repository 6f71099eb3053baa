"""Phase 2 SQL against a real server and the seed data in sql/database_setup.sql."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools.mariadb_server import Database, ServerHandle

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
SETUP_SQL = SQL_DIR / "database_setup.sql"
PHASE2_SQL = SQL_DIR / "phase2_queries.sql"
MARKER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
BIND_SQL = "SET @plan_type = %s, @lookback_days = %s"

QUERY2_COLUMNS = [
    "customer_id",
    "email",
    "first_name",
    "last_name",
    "plan_type",
    "page_view_id",
    "page",
    "device",
    "location",
    "viewed_at",
]
# customer_id -> winning page_view_id for plan pro, last 7 days (see the seed header).
EXPECTED_PRO_7_DAYS = {1: 2, 2: 7, 3: 9, 5: 15, 6: 17, 8: 20, 9: 23}


def named_queries(path: Path = PHASE2_SQL) -> dict[str, str]:
    """Map each ``-- name: X`` marker to the SQL text up to the next marker."""
    text = path.read_text(encoding="utf-8")
    markers = list(MARKER.finditer(text))
    queries = {}
    for marker, following in zip(markers, [*markers[1:], None], strict=True):
        end = following.start() if following else len(text)
        queries[marker.group(1)] = text[marker.start() : end].strip()
    return queries


def run_query(
    db: Database,
    name: str,
    plan_type: str = "pro",
    lookback_days: int = 7,
    session_sql: Sequence[str] = (),
) -> tuple[list[str], list[dict[str, Any]]]:
    """Bind the parameters with a parameterised SET, run the named query verbatim."""
    conn = db.connect()
    try:
        cursor = conn.cursor(dictionary=True)
        for statement in session_sql:
            cursor.execute(statement)
        cursor.execute(BIND_SQL, (plan_type, lookback_days))
        cursor.execute(named_queries()[name])
        rows = cursor.fetchall()
        return list(cursor.column_names), rows
    finally:
        conn.close()


def winners(db: Database, plan_type: str = "pro", lookback_days: int = 7) -> dict[int, int]:
    """Query 2 as ``{customer_id: page_view_id}``."""
    _, rows = run_query(db, "query2", plan_type, lookback_days)
    return {row["customer_id"]: row["page_view_id"] for row in rows}


def query2_by_customer(db: Database) -> dict[int, dict[str, Any]]:
    """Query 2 rows for pro / 7 days keyed by customer id."""
    _, rows = run_query(db, "query2")
    return {row["customer_id"]: row for row in rows}


def utc_now(db: Database) -> datetime:
    """The server clock in UTC (the seed is relative to it, not to ours)."""
    conn = db.connect()
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT UTC_TIMESTAMP()")
        return cursor.fetchone()[0]
    finally:
        conn.close()


# --- the file itself -------------------------------------------------------


def test_phase2_file_has_its_named_queries_and_defaults() -> None:
    text = PHASE2_SQL.read_text(encoding="utf-8")
    assert list(named_queries()) == ["query1", "query2", "query2_per_customer", "query3"]
    assert "SET @plan_type = 'pro';" in text
    assert "SET @lookback_days = 7;" in text
    for sql in named_queries().values():
        assert sql.endswith(";")
        assert "@plan_type" in sql or "@lookback_days" in sql
        assert "%s" not in sql and "{" not in sql  # no client-side formatting


def test_setup_file_does_not_pick_a_database() -> None:
    code = "\n".join(
        line
        for line in SETUP_SQL.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("--")
    )
    assert code.startswith("SET time_zone = '+00:00';")
    assert not re.search(r"^\s*(USE|CREATE\s+(DATABASE|SCHEMA))\b", code, re.I | re.M)


# --- query 2: who qualifies and which view wins -----------------------------


def test_query2_returns_exactly_the_expected_customers_and_views(seeded_db: Database) -> None:
    assert winners(seeded_db) == EXPECTED_PRO_7_DAYS


def test_query2_columns_and_order(seeded_db: Database) -> None:
    columns, rows = run_query(seeded_db, "query2")
    assert columns == QUERY2_COLUMNS
    ids = [row["customer_id"] for row in rows]
    assert ids == sorted(ids)


def test_latest_view_wins_not_highest_id(seeded_db: Database) -> None:
    row = query2_by_customer(seeded_db)[1]
    assert row["page_view_id"] == 2
    assert row["page"] == "/app/dashboard?tab=usage"


def test_same_second_tie_goes_to_higher_page_view_id(
    mariadb: ServerHandle, seeded_db: Database
) -> None:
    times = mariadb.execute(
        "SELECT viewed_at FROM page_views WHERE id IN (14, 15)", database=seeded_db.name
    )
    assert times[0] == times[1]  # the seed really has a tie
    assert query2_by_customer(seeded_db)[5]["page_view_id"] == 15


@pytest.mark.parametrize(
    ("customer_id", "why"),
    [
        (4, "pro, all views older than 7 days"),
        (7, "pro, only view 7 days 1 hour ago"),
        (10, "pro, no page views"),
        (11, "free, recent views"),
        (12, "basic, recent views"),
        (13, "enterprise, recent views"),
    ],
)
def test_non_qualifying_customers_are_absent(
    seeded_db: Database, customer_id: int, why: str
) -> None:
    assert customer_id not in winners(seeded_db), why


def test_window_boundary_just_inside_and_just_outside(seeded_db: Database) -> None:
    now = utc_now(seeded_db)
    result = query2_by_customer(seeded_db)
    inside = result[6]["viewed_at"]
    assert inside >= now - timedelta(days=7)
    assert now - inside > timedelta(days=6, hours=22)
    assert 7 not in result


def test_null_device_and_location_come_back_as_none(seeded_db: Database) -> None:
    row = query2_by_customer(seeded_db)[9]
    assert row["page_view_id"] == 23
    assert row["device"] is None
    assert row["location"] is None


def test_non_ascii_values_round_trip(seeded_db: Database) -> None:
    result = query2_by_customer(seeded_db)
    assert (result[2]["first_name"], result[2]["last_name"]) == ("José", "Müller")
    assert result[2]["location"] == "São Paulo, BR"
    assert result[2]["page"] == "/app/reports/café"
    assert (result[3]["first_name"], result[3]["last_name"]) == ("小明", "王")
    assert result[3]["page"] == "/docs/入门"


def test_malformed_email_is_returned_for_the_program_to_reject(seeded_db: Database) -> None:
    row = query2_by_customer(seeded_db)[8]
    assert row["email"] == "not-an-email"
    assert row["page_view_id"] == 20


def test_viewed_at_is_a_naive_utc_datetime_inside_the_window(seeded_db: Database) -> None:
    now = utc_now(seeded_db)
    for row in query2_by_customer(seeded_db).values():
        assert isinstance(row["viewed_at"], datetime)
        assert row["viewed_at"].tzinfo is None
        assert now - timedelta(days=7) <= row["viewed_at"] <= now


@pytest.mark.parametrize(
    ("plan_type", "lookback_days", "expected"),
    [
        ("pro", 30, {**EXPECTED_PRO_7_DAYS, 4: 11, 7: 19}),
        ("pro", 2, {1: 2, 2: 7, 3: 9, 5: 15, 8: 20, 9: 23}),
        ("enterprise", 7, {13: 31}),
        ("enterprise", 30, {13: 31, 14: 34}),
        ("free", 7, {11: 24}),
        ("basic", 7, {12: 27}),
        ("basic", 30, {12: 27, 15: 36}),
        ("no-such-plan", 7, {}),
    ],
)
def test_parameters_change_the_answer(
    seeded_db: Database, plan_type: str, lookback_days: int, expected: dict[int, int]
) -> None:
    assert winners(seeded_db, plan_type, lookback_days) == expected


@pytest.mark.parametrize("time_zone", ["-08:00", "+09:30"])
def test_query2_ignores_the_session_time_zone(seeded_db: Database, time_zone: str) -> None:
    _, rows = run_query(seeded_db, "query2", session_sql=[f"SET time_zone = '{time_zone}'"])
    assert {r["customer_id"]: r["page_view_id"] for r in rows} == EXPECTED_PRO_7_DAYS


@pytest.mark.parametrize(
    "collation",
    ["utf8mb4_general_ci", "utf8mb4_unicode_ci", "utf8mb4_bin", "utf8mb4_0900_ai_ci"],
)
def test_query2_works_with_any_connection_collation(
    mariadb: ServerHandle, seeded_db: Database, collation: str
) -> None:
    # A user variable takes the connection collation; the query must not hit
    # "Illegal mix of collations" against the utf8mb4_unicode_ci column.
    known = mariadb.execute("SHOW COLLATION LIKE %s", (collation,))
    if not known:
        pytest.skip(f"{collation} not available on this server")
    session_sql = [f"SET NAMES utf8mb4 COLLATE {collation}"]
    _, rows = run_query(seeded_db, "query2", session_sql=session_sql)
    assert {r["customer_id"]: r["page_view_id"] for r in rows} == EXPECTED_PRO_7_DAYS


def test_query2_runs_as_least_privilege_user(
    seeded_db: Database, app_user: Callable[..., Database]
) -> None:
    reader = app_user(seeded_db)
    assert winners(reader) == EXPECTED_PRO_7_DAYS


def test_query2_uses_an_index_on_page_views(seeded_db: Database) -> None:
    conn = seeded_db.connect()
    try:
        cursor = conn.cursor(dictionary=True)
        cursor.execute(BIND_SQL, ("pro", 7))
        cursor.execute("EXPLAIN " + named_queries()["query2"])
        plan = cursor.fetchall()
    finally:
        conn.close()
    page_view_rows = [row for row in plan if row["table"] == "pv"]
    assert page_view_rows, plan
    assert all(row["key"] is not None for row in page_view_rows), plan


# --- setup file ----------------------------------------------------------------


def test_setup_file_rerun_resets_the_demo_data(mariadb: ServerHandle, seeded_db: Database) -> None:
    server = mariadb
    server.execute("DELETE FROM customers WHERE id IN (1, 2)", database=seeded_db.name)
    server.execute(
        "INSERT INTO customers (email, plan_type) VALUES ('extra@example.com', 'pro')",
        database=seeded_db.name,
    )
    server.load_sql_file(SETUP_SQL, seeded_db.name)
    counts = server.execute(
        "SELECT (SELECT COUNT(*) FROM customers), (SELECT COUNT(*) FROM page_views)",
        database=seeded_db.name,
    )
    assert counts == [(15, 40)]
    assert winners(seeded_db) == EXPECTED_PRO_7_DAYS


def test_setup_and_phase2_files_run_in_the_command_line_client(
    mariadb: ServerHandle, seeded_db: Database
) -> None:
    server = mariadb
    server.load_sql_file(SETUP_SQL, seeded_db.name)
    output = server.load_sql_file(PHASE2_SQL, seeded_db.name)
    # Batch output: one header line per query, tab-separated.
    assert "view_rank" in output
    assert "page_view_id\tpage\tdevice\tlocation\tviewed_at" in output
    assert "customers_active_in_window" in output
    assert "not-an-email" in output
    assert "小明\t王" in output


# --- queries 1 and 3 -----------------------------------------------------------


def test_query1_ranks_every_window_view_and_rank_one_matches_query2(seeded_db: Database) -> None:
    now = utc_now(seeded_db)
    _, rows = run_query(seeded_db, "query1")
    by_customer: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_customer.setdefault(row["customer_id"], []).append(row)
    assert {c: views[0]["page_view_id"] for c, views in by_customer.items()} == (
        EXPECTED_PRO_7_DAYS
    )
    for views in by_customer.values():
        assert [v["view_rank"] for v in views] == list(range(1, len(views) + 1))
        times = [v["viewed_at"] for v in views]
        assert times == sorted(times, reverse=True)
        assert all(t >= now - timedelta(days=7) for t in times)
    assert [v["page_view_id"] for v in by_customer[5][:2]] == [15, 14]
    assert len(rows) == 16


def test_query3_summarises_per_plan_type(seeded_db: Database) -> None:
    _, rows = run_query(seeded_db, "query3")
    by_plan = {row["plan_type"]: row for row in rows}
    assert list(by_plan) == ["basic", "enterprise", "free", "pro"]
    assert {p: r["customers"] for p, r in by_plan.items()} == {
        "basic": 2,
        "enterprise": 2,
        "free": 1,
        "pro": 10,
    }
    assert sum(r["views_total"] for r in rows) == 40
    assert by_plan["pro"]["views_in_window"] == 16
    assert by_plan["pro"]["customers_active_in_window"] == len(EXPECTED_PRO_7_DAYS)
    assert by_plan["enterprise"]["customers_active_in_window"] == 1
    assert all(r["views_in_window"] <= r["views_total"] for r in rows)
    assert by_plan["pro"]["last_view_at"] == query2_by_customer(seeded_db)[1]["viewed_at"]
