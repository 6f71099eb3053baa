"""The preflight, `main.py --check`: configuration, database, query, API key and the types
Iterable holds for the fields the job sends; sends nothing."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from db_connection import DatabaseConnection, DatabaseError, RowSource
from exit_codes import EXIT_ABORTED, EXIT_OK
from iterable_client import (
    GET_FIELDS,
    IterableClient,
    RetryPolicy,
    StopRun,
    is_unavailable,
    with_article,
)
from logger_config import mask_email
from payloads import user_fields_sent
from rate_limit import RateLimiters
from segment import check_list_exists, stale_source
from settings import Settings
from state_mysql import check_store

log = logging.getLogger(__name__)


def check_database(settings: Settings) -> list[str]:
    """Connect, run Query 2 with LIMIT 1 and EXPLAIN it; lines for the report."""
    with DatabaseConnection(settings.database) as db:
        source = RowSource(db, settings.plan_type, settings.lookback_days)
        first = source.first_row()
        plan = source.explain()
        newest = source.newest_view()
        problem = unknown_plan(settings.plan_type, source) if first is None else None
    if problem:
        raise CheckFailed(problem)
    sample = (
        "no qualifying rows"
        if first is None
        else f"first row: customer {first['customer_id']} ({mask_email(first.get('email'))})"
    )
    database = settings.database
    stale = stale_source(newest, settings.lookback_days, datetime.now(UTC))
    if stale:
        log.warning("%s", stale)
    newest_line = "none" if newest is None else f"{newest:%Y-%m-%d %H:%M} UTC"
    return [
        f"connected to database {database.database} over {database.transport()}",
        f"Query 2 runs; {sample}",
        f"plan: {describe_plan(plan)}",
        f"newest page view: {newest_line}" + (f" (WARNING: {stale})" if stale else ""),
    ]


# The optimizer reads a table this small whole rather than through an index: cheaper.
SMALL_TABLE_ROWS = 1000
PER_CUSTOMER_INDEX = (
    "CREATE INDEX idx_page_views_customer_viewed_id ON page_views (customer_id, viewed_at, id)"
)
FULL_SCANS = frozenset({"ALL", "index"})


def describe_plan(plan: list[dict[str, Any]]) -> str:
    """Query 2's EXPLAIN in words: how customers are read, and how each one's newest view
    is found; what to create when the per-customer index is missing on a large table."""
    customers, dives, winners, others = [], [], [], []
    for row in plan:
        table, kind = str(row.get("table") or ""), str(row.get("type") or "")
        key, rows = row.get("key"), int(row.get("rows") or 0)
        if table.startswith("<"):  # MySQL 8 materialises the CTE; its own rows say how
            continue
        if "SUBQUERY" in str(row.get("select_type") or ""):
            dives.append(_newest_view(row))
        elif table == "c":
            customers.append(
                f"customers: read whole, about {rows:,} rows (a full scan, as expected on a "
                "small table or when most customers are on the plan)"
                if kind in FULL_SCANS
                else f"customers: those on the plan, through {key}"
            )
        elif table == "pv" and kind == "eq_ref":
            winners.append("each newest view read by primary key")
        else:
            others.append(f"{table}: {kind} via {key or 'no index'}")
    return "; ".join(customers + dives + winners + others)


def _newest_view(row: dict[str, Any]) -> str:
    key, rows = row.get("key"), int(row.get("rows") or 0)
    full = row.get("type") in FULL_SCANS
    # An index on customer_id is looked up with the customer's id (EXPLAIN's ref: db.c.id).
    per_customer = str(row.get("ref") or "").endswith(".c.id")
    if full and rows < SMALL_TABLE_ROWS:
        return (
            f"page views: read whole for each customer, about {rows:,} rows (a full scan, "
            "as expected on a table this small)"
        )
    if per_customer and "filesort" not in str(row.get("Extra") or ""):
        return f"page views: each customer's newest view in the window by one dive into {key}"
    how = f"found through {key} and sorted" if per_customer else "scanned"
    return (
        f"page views: each customer's views {how}, slower as views grow; create the "
        f"per-customer index: {PER_CUSTOMER_INDEX}"
    )


def unknown_plan(plan_type: str, source: RowSource) -> str | None:
    """A message when no customer has PLAN_TYPE (compared as Query 2 does, without case)."""
    types = source.plan_types()
    if plan_type.casefold() in {t.casefold() for t in types}:
        return None
    shown = ", ".join(types) if types else "none: the customers table is empty"
    return f"PLAN_TYPE {plan_type!r} matches no customer; the plan types there are: {shown}"


# Iterable's published limit for users/getFields, requests per second.
GET_FIELDS_RATE = 3.0
# What the job sends every user field as, and how getFields names that type.
SENT_AS = "string"


def check_client(settings: Settings) -> IterableClient:
    # One attempt: a preflight reports what it sees instead of backing off for a minute.
    return IterableClient(
        api_key=settings.iterable_api_key,
        base_url=settings.iterable_base_url,
        timeout=settings.request_timeout,
        retry=RetryPolicy(max_attempts=1),
        limiters=RateLimiters({GET_FIELDS: GET_FIELDS_RATE}),
    )


def check_api_key(settings: Settings) -> list[str]:
    """Read one user through the API: proves the key and the data center without a write."""
    with check_client(settings) as client:
        call = client.check_key()
        if not call.ok:
            raise CheckFailed(call_problem(settings, call.http_status, call.error))
        lines = [f"Iterable at {settings.iterable_base_url} accepts the key"]
        if settings.list_id is not None:
            check_list_exists(client, settings.list_id)
            lines.append(f"list {settings.list_id} exists (ITERABLE_LIST_ID)")
    return lines


def call_problem(settings: Settings, status: int | None, error: str | None) -> str:
    # error is a short phrase: "connection refused", "timed out after 10s", "HTTP 503".
    problem = error or f"HTTP {status}"
    if is_unavailable(status):
        return f"cannot reach {settings.iterable_base_url}: {problem}"
    return f"Iterable at {settings.iterable_base_url}: {problem}"


def check_fields(settings: Settings) -> list[str]:
    """Iterable fixes a field's type from its first value and refuses other types from then
    on: each field the job sends must be a string there, or not there yet."""
    with check_client(settings) as client:
        call = client.get_fields()
    if not call.ok or call.body is None:
        raise CheckFailed(call_problem(settings, call.http_status, call.error))
    held = call.body["fields"]
    sent = user_fields_sent(settings.candidate_name, settings.identify_by)
    clashes = [(name, held[name]) for name in sent if held.get(name, SENT_AS) != SENT_AS]
    if clashes:
        described = [f"{name} is {with_article(str(kind))}" for name, kind in clashes]
        listed = ", ".join(described[:-1]) + " and " if len(described) > 1 else ""
        raise CheckFailed(f"{listed}{described[-1]} in Iterable; the job sends text")
    return [f"the fields the job sends are text in Iterable or not there yet ({', '.join(sent)})"]


class CheckFailed(Exception):
    """A check did not pass; the message says why in one line."""


def check_state(settings: Settings) -> list[str]:
    """The MySQL store: it connects, its tables exist (or may be created), it takes a
    write, and its lock is free."""
    assert settings.state_database is not None
    return list(check_store(settings.state_database))


def run_checks(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Print one line per check; 0 only when every check passes."""
    steps: list[tuple[str, Callable[[Settings], list[str]]]] = [("database", check_database)]
    if settings.state_database is not None:
        steps.append(("state", check_state))
    if not settings.dry_run:
        steps += [("iterable", check_api_key), ("fields", check_fields)]
    out.write("configuration: ok\n")
    failed: set[str] = set()
    for name, step in steps:
        if name == "fields" and "iterable" in failed:
            out.write(f"{name}: not checked: Iterable must accept the key first\n")
            continue
        try:
            for line in step(settings):
                out.write(f"{name}: ok: {line}\n")
        except (DatabaseError, StopRun, CheckFailed) as exc:
            failed.add(name)
            out.write(f"{name}: FAILED: {exc}\n")
    passed = not failed
    out.write("all checks passed\n" if passed else "some checks failed\n")
    return EXIT_OK if passed else EXIT_ABORTED
