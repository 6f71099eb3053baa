"""Synthetic Query 2 data, loaded server-side from MariaDB's sequence tables, and its expectations.

Customers 1..N are on the pro plan and each has `views` page views: view 1 (the lowest
id) is the latest, up to an hour old; view j is (j - 1) x 8 hours older, so views 2..21
are inside the 7-day window and views 22 and up outside it (10 views a customer: all in
the window; 30: 21 of them, 70 %). So Query 2 has to order by time, not by id, and must
skip many in-window views per customer. Customers N+1..N+N/10 are noise that
Query 2 must leave out: free, basic and enterprise customers with recent views, and pro
customers whose views are all older than the window.

Every value is a function of the customer id, so `expected_user` and `expected_event`
say what the sandbox must hold without asking the database (or the job's own code).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from devtools.mariadb_server import ServerHandle

DOMAIN = "bench.example.com"
FIRST_NAMES = ("Alice", "José", "Wei", "Fatima", "Liam")
DEVICES = ("desktop", "mobile", "tablet")
LOCATIONS = ("Berlin, DE", "São Paulo, BR", "東京, JP", "Austin, US")
NOISE_PLANS = ("free", "basic", "enterprise", "pro")
PAGES = 97
# Hours between a customer's views: 21 of them fit in the 7-day window.
VIEW_SPACING_HOURS = 8
CHUNK_ROWS = 500_000
SETUP_SQL = Path(__file__).resolve().parent.parent / "sql" / "database_setup.sql"


@dataclass(frozen=True)
class Dataset:
    database: str
    customers: int  # qualifying pro customers: the users the job must send
    views: int  # page views per qualifying customer
    t0: datetime  # naive UTC reference time of the load
    total_customers: int
    total_views: int
    load_seconds: float

    def email(self, i: int) -> str:
        return f"user{i}@{DOMAIN}"

    def latest_view(self, i: int) -> tuple[int, str, str | None, str, datetime]:
        """(page view id, page, device, location, viewed_at) of customer i's latest view."""
        device = None if i % 11 == 0 else DEVICES[i % 3]
        viewed_at = self.t0 - timedelta(seconds=i % 3600)
        page = f"/app/page/{i % PAGES}?ref=bench"
        return (i - 1) * self.views + 1, page, device, LOCATIONS[i % 4], viewed_at

    def expected_user(self, i: int) -> dict[str, Any]:
        """dataFields of customer i's profile (NULLs are never sent, CANDIDATE_NAME is unset)."""
        _, page, _, _, _ = self.latest_view(i)
        return {
            "first_name": FIRST_NAMES[i % 5],
            "last_name": f"Last{i}",
            "plan_type": "pro",
            "recent_page_view": page,
        }

    def expected_event(self, i: int) -> dict[str, Any]:
        view_id, page, device, location, viewed_at = self.latest_view(i)
        utc = viewed_at.replace(tzinfo=UTC)
        fields: dict[str, Any] = {"page": page}
        if device is not None:
            fields["device"] = device
        fields["location"] = location
        fields["timestamp"] = utc.strftime("%Y-%m-%d %H:%M:%S +00:00")
        return {
            "id": f"page-view-{view_id}",
            "email": self.email(i),
            "eventName": "page_view",
            "createdAt": int(utc.timestamp()),
            "dataFields": fields,
        }


def load(admin: ServerHandle, database: str, customers: int, views: int) -> Dataset:
    """Create `database` with the app's schema and fill it; a few seconds per million rows."""
    started = time.monotonic()
    noise = max(1, customers // 10)
    t0 = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    admin.create_database(database)
    # The app's own schema file, so the bench measures the indexes users get.
    admin.load_sql_file(SETUP_SQL, database)
    conn = admin.connect(database)
    try:
        cursor = conn.cursor()
        cursor.execute("DELETE FROM page_views")  # the demo rows
        cursor.execute("DELETE FROM customers")
        cursor.execute("SET SESSION foreign_key_checks = 0, unique_checks = 0")
        cursor.execute("SET @t0 = %s", (t0.strftime("%Y-%m-%d %H:%M:%S"),))
        names = ", ".join(f"'{name}'" for name in FIRST_NAMES)
        plans = ", ".join(f"'{plan}'" for plan in NOISE_PLANS)
        for low, high in _chunks(1, customers + noise):
            cursor.execute(
                "INSERT INTO customers (id, email, first_name, last_name, plan_type, created_at) "
                f"SELECT seq, CONCAT('user', seq, '@{DOMAIN}'), ELT(1 + seq % 5, {names}), "
                f"CONCAT('Last', seq), IF(seq <= {customers}, 'pro', "
                f"ELT(1 + seq % 4, {plans})), @t0 - INTERVAL seq % 1000 DAY "
                f"FROM seq_{low}_to_{high}"
            )
        devices = ", ".join(f"'{d}'" for d in DEVICES)
        locations = ", ".join(f"'{loc}'" for loc in LOCATIONS)
        # Qualifying customers: view j of customer c has id (c-1)*views + j.
        for low, high in _chunks(1, customers * views):
            cursor.execute(
                "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
                f"SELECT seq, c, IF(j = 1, CONCAT('/app/page/', c % {PAGES}, '?ref=bench'), "
                "CONCAT('/older/', j)), "
                f"IF(j = 1 AND c % 11 = 0, NULL, ELT(1 + c % 3, {devices})), "
                f"ELT(1 + c % 4, {locations}), "
                f"@t0 - INTERVAL (j - 1) * {VIEW_SPACING_HOURS} HOUR - INTERVAL c % 3600 SECOND "
                f"FROM (SELECT seq, (seq - 1) DIV {views} + 1 AS c, (seq - 1) % {views} + 1 AS j "
                f"FROM seq_{low}_to_{high}) AS s"
            )
        # Noise: two views each; recent for other plans, older than the window for pro.
        base = customers * views
        for low, high in _chunks(1, noise * 2):
            cursor.execute(
                "INSERT INTO page_views (id, customer_id, page, device, location, viewed_at) "
                f"SELECT {base} + seq, {customers} + (seq - 1) DIV 2 + 1, '/noise', 'desktop', "
                "'Leeds, GB', "
                f"IF(ELT(1 + ({customers} + (seq - 1) DIV 2 + 1) % 4, {plans}) = 'pro', "
                "@t0 - INTERVAL 9 DAY - INTERVAL seq % 7 DAY, @t0 - INTERVAL seq % 5 DAY) "
                f"FROM seq_{low}_to_{high}"
            )
        cursor.execute("ANALYZE TABLE customers, page_views")
        cursor.fetchall()
        cursor.close()
    finally:
        conn.close()
    return Dataset(
        database=database,
        customers=customers,
        views=views,
        t0=t0,
        total_customers=customers + noise,
        total_views=customers * views + noise * 2,
        load_seconds=time.monotonic() - started,
    )


def _chunks(first: int, last: int) -> list[tuple[int, int]]:
    return [(low, min(last, low + CHUNK_ROWS - 1)) for low in range(first, last + 1, CHUNK_ROWS)]


def verify(
    dataset: Dataset, users: dict[str, Any], events: dict[str, Any], duplicates: list[Any]
) -> dict[str, int]:
    """Compare the sandbox's store with what the job had to send; every count should be 0.

    users: GET /_sandbox/users, events: GET /_sandbox/events, duplicates: GET
    /_sandbox/duplicates. A record written more than once (a retry after a lost answer)
    is counted as rewritten, not as a duplicate: it leaves one record in Iterable.
    """
    profiles, user_writes = users["users"], users["writes"]
    stored_events, event_writes = events["events"], events["writes"]
    lost_users = wrong_users = lost_events = wrong_events = 0
    for i in range(1, dataset.customers + 1):
        email = dataset.email(i)
        profile = profiles.get(email)
        if profile is None:
            lost_users += 1
        elif profile != dataset.expected_user(i):
            wrong_users += 1
        event = dataset.expected_event(i)
        stored = stored_events.get(event["id"])
        if stored is None:
            lost_events += 1
        elif stored != event:
            wrong_events += 1
    return {
        "lost_users": lost_users,
        "wrong_users": wrong_users,
        "extra_users": len(profiles)
        + len(users.get("userIds") or {})
        - (dataset.customers - lost_users),
        "rewritten_users": sum(1 for count in user_writes.values() if count > 1),
        "lost_events": lost_events,
        "wrong_events": wrong_events,
        "extra_events": len(stored_events) - (dataset.customers - lost_events),
        "rewritten_events": sum(1 for count in event_writes.values() if count > 1),
        "duplicate_events": len(duplicates),
    }
