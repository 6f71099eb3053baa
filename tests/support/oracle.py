"""The oracle: what a complete, exactly-once sync leaves in the sandbox, and audits of it."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from db_connection import SYNC_QUERY, load_query
from devtools.mariadb_server import Database, ServerHandle
from tests.support.job import state_rows

_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+$")


@dataclass
class Expected:
    """The sandbox store a complete sync must leave: users by email, events by id."""

    users: dict[str, dict[str, Any]]
    events: dict[str, dict[str, Any]]
    emails: dict[int, str]  # customer id -> email, for every row that can be sent


def expected_store(
    server: ServerHandle, database: str, plan: str = "pro", days: int = 7
) -> Expected:
    """Query 2's rows turned into the profile and event Iterable should hold.

    Written apart from payloads.py on purpose: a test that compared the store with the
    program's own payload builder would accept whatever that builder got wrong.
    """
    query = load_query(SYNC_QUERY)
    conn = server.connect(database, time_zone="+00:00")
    try:
        cursor = conn.cursor(dictionary=True)
        cursor.execute("SET @plan_type = %s, @lookback_days = %s", (plan, days))
        cursor.execute(query)
        rows = cursor.fetchall()
        cursor.close()
    finally:
        conn.close()
    expected = Expected({}, {}, {})
    for row in rows:
        email = str(row["email"]).strip().lower()
        if not _EMAIL.match(email):
            continue
        viewed_at = row["viewed_at"].replace(tzinfo=UTC)
        expected.emails[int(row["customer_id"])] = email
        expected.users[email] = _present(
            first_name=row["first_name"],
            last_name=row["last_name"],
            plan_type=row["plan_type"],
            recent_page_view=row["page"],
        )
        expected.events[f"page-view-{row['page_view_id']}"] = {
            "email": email,
            "eventName": "page_view",
            "createdAt": int(viewed_at.timestamp()),
            "dataFields": _present(
                page=row["page"],
                device=row["device"],
                location=row["location"],
                timestamp=viewed_at.strftime("%Y-%m-%d %H:%M:%S +00:00"),
            ),
        }
    return expected


def _present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@dataclass
class Audit:
    """Differences between the sandbox's store and the expected one."""

    lost: list[str] = field(default_factory=list)  # expected user/event absent or wrong
    duplicated: list[str] = field(default_factory=list)  # logical duplicates, extra records
    rewrites: int = 0  # writes beyond the first (resends Iterable absorbed by id or merge)

    @property
    def clean(self) -> bool:
        return not self.lost and not self.duplicated


def audit(sandbox: Any, expected: Expected) -> Audit:
    """Compare the sandbox's own store with what a complete, exactly-once sync leaves."""
    result = Audit()
    users, events = sandbox.users(), sandbox.events()
    for email, fields in expected.users.items():
        if users.get(email) != fields:
            result.lost.append(f"user {email}: {users.get(email)!r} != {fields!r}")
    for event_id, event in expected.events.items():
        stored = events.get(event_id)
        if stored is None or any(stored.get(k) != v for k, v in event.items()):
            result.lost.append(f"event {event_id}: {stored!r}")
    result.duplicated += [f"extra user {email}" for email in set(users) - set(expected.users)]
    result.duplicated += [f"extra event {eid}" for eid in set(events) - set(expected.events)]
    result.duplicated += [f"duplicate event {dup['ids']}" for dup in sandbox.duplicate_events()]
    result.rewrites = sum(n - 1 for n in sandbox.user_writes().values()) + sum(
        n - 1 for n in sandbox.event_writes().values()
    )
    return result


def unbacked_state_claims(state: Path | Database, sandbox: Any) -> list[str]:
    """Claims in a sync state (a file, or a MySQL state database) the sandbox does not back.

    Every user fingerprint must be the fingerprint of the profile the sandbox holds,
    and every accepted event id must be stored there, for the same customer's email.
    A file is opened read-only, so it can inspect the file a killed run left behind.
    """
    if isinstance(state, Path) and not state.exists():
        return []
    users, events = sandbox.users(), sandbox.events()
    fingerprints = {
        _fingerprint({"email": email, "dataFields": fields}): email
        for email, fields in users.items()
    }
    # A NULL fingerprint claims nothing: the profile is to be sent again.
    user_rows = state_rows(
        state, "SELECT customer_id, fingerprint FROM users WHERE fingerprint IS NOT NULL"
    )
    event_rows = state_rows(state, "SELECT event_id, customer_id FROM events")
    problems = [
        f"state has customer {cid}'s profile as {fp[:12]}, the sandbox holds no such profile"
        for cid, fp in user_rows
        if fp not in fingerprints
    ]
    owners = {fingerprints[fp]: cid for cid, fp in user_rows if fp in fingerprints}
    for event_id, cid in event_rows:
        stored = events.get(event_id)
        if stored is None:
            problems.append(f"state has event {event_id} accepted, the sandbox has no such event")
        elif stored.get("email") in owners and owners[stored["email"]] != cid:
            problems.append(f"event {event_id} belongs to another customer than {cid}")
    return problems


def _fingerprint(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
