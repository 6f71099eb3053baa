"""The preflight, `main.py --check`: configuration, database, query and API key; sends nothing."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TextIO

from db_connection import DatabaseConnection, DatabaseError, RowSource
from exit_codes import EXIT_ABORTED, EXIT_OK
from iterable_client import IterableClient, RetryPolicy, StopRun, is_unavailable
from logger_config import mask_email
from segment import check_list_exists
from settings import Settings

log = logging.getLogger(__name__)


def check_database(settings: Settings) -> list[str]:
    """Connect, run Query 2 with LIMIT 1 and EXPLAIN it; lines for the report."""
    with DatabaseConnection(settings.database) as db:
        source = RowSource(db, settings.plan_type, settings.lookback_days)
        first = source.first_row()
        plan = source.explain()
        problem = unknown_plan(settings.plan_type, source) if first is None else None
    if problem:
        raise CheckFailed(problem)
    sample = (
        "no qualifying rows"
        if first is None
        else f"first row: customer {first['customer_id']} ({mask_email(first.get('email'))})"
    )
    tables = ", ".join(
        f"{row.get('table')}: {row.get('type')} via {row.get('key') or 'no index'}" for row in plan
    )
    database = settings.database
    return [
        f"connected to database {database.database} over {database.transport()}",
        f"Query 2 runs; {sample}",
        f"plan: {tables}",
    ]


def unknown_plan(plan_type: str, source: RowSource) -> str | None:
    """A message when no customer has PLAN_TYPE (compared as Query 2 does, without case)."""
    types = source.plan_types()
    if plan_type.casefold() in {t.casefold() for t in types}:
        return None
    shown = ", ".join(types) if types else "none: the customers table is empty"
    return f"PLAN_TYPE {plan_type!r} matches no customer; the plan types there are: {shown}"


def check_api_key(settings: Settings) -> list[str]:
    """Read one user through the API: proves the key and the data center without a write."""
    # One attempt: a preflight reports what it sees instead of backing off for a minute.
    client = IterableClient(
        api_key=settings.iterable_api_key,
        base_url=settings.iterable_base_url,
        timeout=settings.request_timeout,
        retry=RetryPolicy(max_attempts=1),
    )
    with client:
        call = client.check_key()
        if not call.ok:
            # call.error is a short phrase: "connection refused", "timed out after 10s", "HTTP 503".
            problem = call.error or f"HTTP {call.http_status}"
            if is_unavailable(call.http_status):
                raise CheckFailed(f"cannot reach {settings.iterable_base_url}: {problem}")
            raise CheckFailed(f"Iterable at {settings.iterable_base_url}: {problem}")
        lines = [f"Iterable at {settings.iterable_base_url} accepts the key"]
        if settings.list_id is not None:
            check_list_exists(client, settings.list_id)
            lines.append(f"list {settings.list_id} exists (ITERABLE_LIST_ID)")
    return lines


class CheckFailed(Exception):
    """A check did not pass; the message says why in one line."""


def run_checks(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Print one line per check; 0 only when every check passes."""
    steps: list[tuple[str, Callable[[Settings], list[str]]]] = [("database", check_database)]
    if not settings.dry_run:
        steps.append(("iterable", check_api_key))
    out.write("configuration: ok\n")
    passed = True
    for name, step in steps:
        try:
            for line in step(settings):
                out.write(f"{name}: ok: {line}\n")
        except (DatabaseError, StopRun, CheckFailed) as exc:
            passed = False
            out.write(f"{name}: FAILED: {exc}\n")
    out.write("all checks passed\n" if passed else "some checks failed\n")
    return EXIT_OK if passed else EXIT_ABORTED
