"""Sync state: what Iterable holds for each customer, kept in SQLite so a run sends only what
changed and keeps Iterable true as customers change.

Per customer it remembers the profile Iterable accepted (its fingerprint, the email it was
accepted under, the profile fields), whether the customer was in the segment after the last
run, the events accepted, permanent rejections with the time they started, GDPR-forgotten
users and list membership.

The state only ever moves forward after Iterable said yes. A crash before a commit
loses at most the last few acknowledgements, and those rows are simply sent again:
every write is idempotent (a profile merge, an event with a fixed id, a list
subscription), so a resend has no further effect in Iterable.

Customer ids are stored as text: MySQL's BIGINT UNSIGNED reaches 2^64 - 1, past SQLite's
signed 64-bit integers.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from payloads import canonical_json

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
# Commit at least this often, so a kill loses little acknowledged work.
COMMIT_EVERY_SECONDS = 1.0
COMMIT_EVERY_CHANGES = 500
SEEN_BATCH = 1000
# Customers looked up in the state per query (two parameters each, under SQLite's 999).
KNOWN_BATCH = 400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    customer_id TEXT PRIMARY KEY,
    fingerprint TEXT,
    email TEXT,
    profile TEXT,
    in_segment INTEGER NOT NULL DEFAULT 0,
    accepted_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS users_in_segment ON users (in_segment);
CREATE TABLE IF NOT EXISTS events (
    customer_id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    accepted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    customer_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at TEXT NOT NULL,
    first_rejected_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS forgotten (
    customer_id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    forgotten_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS unsure_moves (
    customer_id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    started_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS list_members (
    list_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    identifier TEXT NOT NULL,
    PRIMARY KEY (list_id, customer_id)
);
CREATE TABLE IF NOT EXISTS sync_runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    exit_code INTEGER,
    mode TEXT,
    dry_run INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    succeeded INTEGER,
    failed INTEGER,
    skipped INTEGER,
    outstanding INTEGER,
    left_segment INTEGER,
    aborted TEXT,
    version TEXT
);
CREATE INDEX IF NOT EXISTS sync_runs_started_at ON sync_runs (started_at);
CREATE TABLE IF NOT EXISTS sync_results (
    run_id TEXT NOT NULL,
    result_index INTEGER NOT NULL,
    customer_id TEXT,
    email TEXT,
    segment TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    detail TEXT,
    outstanding INTEGER NOT NULL DEFAULT 0,
    failing_since TEXT,
    user_update_status INTEGER,
    event_track_status INTEGER,
    update_email_status INTEGER,
    PRIMARY KEY (run_id, result_index)
);
CREATE INDEX IF NOT EXISTS sync_results_customer ON sync_results (customer_id);
"""

# Only customers the state holds something about come back: on a first run, none do.
# `k` is the chunk's (customer id, event id) pairs, which each store spells its own way.
KNOWN_SELECT = (
    "SELECT k.id, u.fingerprint, u.email, e.event_id IS NOT NULL, "
    "r.fingerprint, r.reason, r.first_rejected_at, f.email, m.identifier, v.email "
    "FROM k "
    "LEFT JOIN users AS u ON u.customer_id = k.id "
    "LEFT JOIN events AS e ON e.customer_id = k.id AND e.event_id = k.event_id "
    "LEFT JOIN rejections AS r ON r.customer_id = k.id "
    "LEFT JOIN forgotten AS f ON f.customer_id = k.id "
    "LEFT JOIN list_members AS m ON m.customer_id = k.id AND m.list_id = {list_id} "
    "LEFT JOIN unsure_moves AS v ON v.customer_id = k.id "
    "WHERE u.customer_id IS NOT NULL OR e.customer_id IS NOT NULL OR r.customer_id IS NOT NULL "
    "OR f.customer_id IS NOT NULL OR m.customer_id IS NOT NULL"
)


@functools.cache
def _known_sql(rows: int) -> str:
    """KNOWN_SELECT for this many rows: "(?2, ?3), (?4, ?5), ...", after ?1 (the list id)."""
    values = ", ".join(f"(?{2 * i + 2}, ?{2 * i + 3})" for i in range(rows))
    return f"WITH k (id, event_id) AS (VALUES {values}) " + KNOWN_SELECT.format(list_id="?1")


# Version 1 kept integer ids and no emails, profiles, segment, forgotten users or lists.
# Every customer it had accepted is taken to be in the segment: if one has left, the next
# run reads them back and sends their current name and plan once, which is safe. The
# email each profile lives under is recovered from that version's results files.
_MIGRATE_FROM_1 = """
ALTER TABLE users RENAME TO users_v1;
ALTER TABLE events RENAME TO events_v1;
ALTER TABLE rejections RENAME TO rejections_v1;
{schema}
INSERT INTO users (customer_id, fingerprint, email, profile, in_segment, accepted_at)
    SELECT CAST(customer_id AS TEXT), fingerprint, NULL, NULL, 1, accepted_at FROM users_v1;
INSERT OR REPLACE INTO events (customer_id, event_id, accepted_at)
    SELECT CAST(customer_id AS TEXT), event_id, accepted_at FROM events_v1
    ORDER BY accepted_at, rowid;
INSERT INTO rejections (customer_id, fingerprint, reason, rejected_at, first_rejected_at)
    SELECT CAST(customer_id AS TEXT), fingerprint, reason, rejected_at, rejected_at
    FROM rejections_v1;
DROP TABLE users_v1;
DROP TABLE events_v1;
DROP TABLE rejections_v1;
"""


# Version 2 kept every event ever accepted (73 bytes a customer a day); what decides the
# next run is each customer's newest, which a later one replaces as it is accepted.
_MIGRATE_FROM_2 = """
ALTER TABLE events RENAME TO events_v2;
DROP INDEX IF EXISTS events_customer;
{schema}
INSERT OR REPLACE INTO events (customer_id, event_id, accepted_at)
    SELECT customer_id, event_id, accepted_at FROM events_v2 ORDER BY accepted_at, rowid;
DROP TABLE events_v2;
"""


# The results files the job writes, oldest name first.
RESULTS_FILES = "integration_results_*.json"


class StateError(Exception):
    """The state file is corrupt, from a newer version or of another Iterable project; the
    message says what to do."""


@dataclass(frozen=True)
class RecordedRefusal:
    """A row Iterable (or our checks) refused for good, until its data changes."""

    fingerprint: str
    reason: str
    first_rejected_at: str


@dataclass(slots=True)  # read-only; not frozen, which costs a microsecond a row
class Known:
    """What the state says about one customer before their row is sent."""

    user_fingerprint: str | None
    email: str | None  # the email Iterable last accepted for the customer
    event_accepted: bool
    refusal: RecordedRefusal | None
    forgotten_email: str | None  # the email Iterable said was forgotten
    list_identifier: str | None  # how the customer was subscribed to the list, if they are
    # An email move to this address got no answer and Iterable could not be asked whether
    # it happened: the next move first finds out where the profile is.
    unsure_move: str | None = None

    def without_sent(self) -> Known:
        """For --full-refresh: forget what says "already sent" (the profile, the event, a
        refusal); keep where the profile lives, forgotten users and the list."""
        return Known(
            None,
            self.email,
            False,
            None,
            self.forgotten_email,
            self.list_identifier,
            self.unsure_move,
        )


# A customer the state has no record of: never sent, refused, forgotten or listed.
NOTHING_KNOWN = Known(None, None, False, None, None, None)


@dataclass(frozen=True)
class Member:
    """A customer the state has in the segment (or on the list), as Iterable holds them."""

    customer_id: int
    email: str | None
    profile: dict[str, Any] | None
    list_identifier: str | None
    unsure_move: str | None = None  # see Known.unsure_move


class AcceptedUser(NamedTuple):
    """A profile Iterable accepted, as users_accepted records it."""

    customer_id: int
    fingerprint: str
    email: str
    profile: Mapping[str, Any]
    in_segment: bool = True
    clear_refusal: bool = True


# SQLite takes at most 999 bound values in a statement (newer versions take more).
MAX_VARIABLES = 999


class RowInsert(NamedTuple):
    """An INSERT that takes many rows a statement, as VALUES (..), (..), ...

    Through executemany, SQLite ran the statement once a row, which cost more CPU than
    storing the row: 3.6 against 1.4 µs a row for the events table, measured.
    """

    head: str  # the statement up to and including VALUES
    columns: int
    tail: str = ""  # what follows the rows, such as ON CONFLICT

    def run(self, db: sqlite3.Connection, rows: Sequence[Sequence[object]]) -> None:
        per_statement = MAX_VARIABLES // self.columns
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            db.execute(_insert_sql(self, len(chunk)), list(itertools.chain.from_iterable(chunk)))


@functools.cache
def _insert_sql(insert: RowInsert, rows: int) -> str:
    row = "(" + ", ".join("?" * insert.columns) + ")"
    return " ".join([insert.head, ", ".join([row] * rows), insert.tail]).strip()


# Every store runs the same statements, written here in SQLite's spelling; a store that
# speaks another dialect translates them once each (MySQLState.sql).
_UPSERT_USERS = RowInsert(
    "INSERT INTO users (customer_id, fingerprint, email, profile, in_segment, accepted_at) VALUES",
    6,
    "ON CONFLICT(customer_id) DO UPDATE SET fingerprint = excluded.fingerprint, "
    "email = excluded.email, profile = excluded.profile, "
    "in_segment = excluded.in_segment, accepted_at = excluded.accepted_at",
)
# One event a customer, the newest accepted: a row's event is sent unless it is that one.
_INSERT_EVENTS = RowInsert(
    "INSERT OR REPLACE INTO events (customer_id, event_id, accepted_at) VALUES", 3
)
_HELD_ANYTHING = (
    "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM events) "
    "OR EXISTS (SELECT 1 FROM rejections) OR EXISTS (SELECT 1 FROM forgotten) "
    "OR EXISTS (SELECT 1 FROM unsure_moves) "
    "OR EXISTS (SELECT 1 FROM list_members)"
)
# Customers who could leave (in the segment after the last run, or on a list) or come back
# (a profile Iterable holds, out of the segment).
_HELD_MEMBERS = "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM list_members)"
_INSERT_SEEN = RowInsert("INSERT OR IGNORE INTO seen (customer_id) VALUES", 1)
_INSERT_RUN = RowInsert(
    "INSERT OR REPLACE INTO sync_runs (run_id, started_at, finished_at, exit_code, mode, "
    "dry_run, total, succeeded, failed, skipped, outstanding, left_segment, aborted, version) "
    "VALUES",
    14,
)
_INSERT_RESULTS = RowInsert(
    "INSERT OR REPLACE INTO sync_results (run_id, result_index, customer_id, email, segment, "
    "status, reason, detail, outstanding, failing_since, user_update_status, "
    "event_track_status, update_email_status) VALUES",
    13,
)
# The tables a state is made of, in the order a copy writes them.
STATE_TABLES = (
    "meta",
    "users",
    "events",
    "rejections",
    "forgotten",
    "unsure_moves",
    "list_members",
    "sync_runs",
    "sync_results",
)

Statement = str | RowInsert


class StateStore:
    """The state a run reads and writes, whatever keeps it; thread-safe, with writes
    batched into short transactions.

    This class holds every rule; a store (SyncState: a SQLite file, MySQLState: tables in
    MySQL) only runs statements, commits and opens. Writes wait in a queue until the next
    commit, as runs of the same statement that go to the database together, in order (a
    statement per row cost more than the row).
    """

    # What the state is called in messages: a file's path, a database's name.
    where: str = ""

    def __init__(self, list_id: int | None = None, results_dir: Path | None = None) -> None:
        self.list_id = str(list_id) if list_id is not None else ""
        self.results_dir = results_dir
        # Run-level warnings (an upgrade that could not recover everything), for the results.
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        self._pending = 0
        self._last_commit = time.monotonic()
        self._seen: list[tuple[str]] = []
        self._queue: list[tuple[Statement, list[tuple[object, ...]]]] = []
        self._history_rows = 0  # result rows of this run recorded for sync_results
        self._open()
        # A state that held nothing when the run began (a first run) has nothing to look
        # up; one with nobody in the segment or on the list has nobody who can leave, so
        # this run's customers need not be recorded as seen. Together, 915 -> 698 ms of
        # SQLite time per 100,000 rows in a first bulk run.
        self._held_anything = self._exists(_HELD_ANYTHING)
        self._tracks_seen = self._exists(_HELD_MEMBERS)
        # Who was in the segment after the last run: what the mass-leave guard weighs
        # the leavers against.
        self.segment_at_start = self._count("SELECT COUNT(*) FROM users WHERE in_segment = 1")

    # -- what a store provides ------------------------------------------------------------

    def _open(self) -> None:
        """Connect, create or upgrade the tables, empty `seen`, begin a transaction."""
        raise NotImplementedError

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        raise NotImplementedError

    def _run(self, statement: Statement, rows: Sequence[tuple[object, ...]]) -> None:
        """Run a queued statement for each of its rows."""
        raise NotImplementedError

    def _known_rows(self, chunk: Sequence[tuple[int, str]]) -> list[tuple[Any, ...]]:
        """KNOWN_SELECT's rows for these (customer id, event id) pairs."""
        raise NotImplementedError

    def _commit_transaction(self) -> None:
        """Commit, and begin the next transaction."""
        raise NotImplementedError

    def _disconnect(self, commit: bool) -> None:
        raise NotImplementedError

    # -- the run's start ------------------------------------------------------------------

    def _exists(self, sql: str) -> bool:
        return bool(self._count(sql))

    def _count(self, sql: str) -> int:
        with self._lock:
            return int(self._query(sql)[0][0])

    def project(self) -> tuple[str | None, str | None]:
        """The Iterable base URL and the API key's SHA-256 this state was written for."""
        with self._lock:
            rows = dict(
                self._query(
                    "SELECT `key`, value FROM meta "
                    "WHERE `key` IN ('iterable_base_url', 'api_key_sha256')"
                )
            )
        return rows.get("iterable_base_url"), rows.get("api_key_sha256")

    def record_project(self, base_url: str, key_sha256: str) -> None:
        with self._lock:
            self._enqueue(
                "INSERT OR REPLACE INTO meta (`key`, value) VALUES (?, ?)",
                [("iterable_base_url", base_url), ("api_key_sha256", key_sha256)],
            )
            self._commit()

    def some_profiles(self, count: int) -> list[tuple[int, str | None]]:
        """(customer id, email) of a few customers whose profile Iterable accepted."""
        with self._lock:
            rows = self._query(
                "SELECT customer_id, email FROM users WHERE fingerprint IS NOT NULL "
                "ORDER BY in_segment DESC, accepted_at DESC LIMIT ?",
                (count,),
            )
        return [(int(customer_id), email) for customer_id, email in rows]

    @property
    def is_new(self) -> bool:
        """The state held nothing when the run began: a first run, or a lost state."""
        return not self._held_anything

    # -- reading ------------------------------------------------------------------------

    def known_many(self, keys: Sequence[tuple[int, str]]) -> dict[int, Known]:
        """What the state says about each (customer id, event id), by customer id, read in
        one query a KNOWN_BATCH: a query per row cost more than building the row's payloads.
        Customers the state knows nothing about are left out: they are NOTHING_KNOWN."""
        found: dict[int, Known] = {}
        if not self._held_anything:
            return found
        for start in range(0, len(keys), KNOWN_BATCH):
            chunk = keys[start : start + KNOWN_BATCH]
            with self._lock:
                rows = self._known_rows(chunk)
            found.update((int(row[0]), _known(row)) for row in rows)
        return found

    def refusal(self, customer_id: int) -> RecordedRefusal | None:
        with self._lock:
            rows = self._query(
                "SELECT fingerprint, reason, first_rejected_at FROM rejections "
                "WHERE customer_id = ?",
                (str(customer_id),),
            )
        return RecordedRefusal(*rows[0]) if rows else None

    def left_segment(self) -> tuple[int, Iterator[list[Member]]]:
        """How many customers were in the segment after the last run and are not in this
        one, and those customers in chunks.

        Only meaningful once every row of this run was seen.
        """
        if not self._tracks_seen:
            return 0, iter(())
        with self._lock:
            self._flush_queue()
            self._flush_seen()
            # Whoever this run's Query 2 returned is in the segment, sent or not: a customer
            # who went quiet and came back unchanged can leave again.
            self._execute(
                "UPDATE users SET in_segment = 1 WHERE in_segment = 0 "
                "AND customer_id IN (SELECT customer_id FROM seen)"
            )
            rows = self._query(
                "SELECT u.customer_id, u.email, u.profile, m.identifier, v.email FROM users AS u "
                "LEFT JOIN list_members AS m ON m.customer_id = u.customer_id AND m.list_id = ? "
                "LEFT JOIN unsure_moves AS v ON v.customer_id = u.customer_id "
                "WHERE u.in_segment = 1 "
                "AND u.customer_id NOT IN (SELECT customer_id FROM seen) "
                "ORDER BY u.customer_id",
                (self.list_id,),
            )
        chunks = (
            [_member(row) for row in rows[start : start + SEEN_BATCH]]
            for start in range(0, len(rows), SEEN_BATCH)
        )
        return len(rows), chunks

    def list_members_not_seen(self) -> list[Member]:
        """On the list, not in this run's rows, and not in the segment: to unsubscribe."""
        if not self._tracks_seen:
            return []
        with self._lock:
            self._flush_queue()
            self._flush_seen()
            rows = self._query(
                "SELECT m.customer_id, u.email, u.profile, m.identifier, v.email "
                "FROM list_members AS m "
                "LEFT JOIN users AS u ON u.customer_id = m.customer_id "
                "LEFT JOIN unsure_moves AS v ON v.customer_id = m.customer_id "
                "WHERE m.list_id = ? AND COALESCE(u.in_segment, 0) = 0 "
                "AND m.customer_id NOT IN (SELECT customer_id FROM seen)",
                (self.list_id,),
            )
        return [_member(row) for row in rows]

    # -- this run's rows ----------------------------------------------------------------

    def seen_many(self, customer_ids: Iterable[int]) -> None:
        """Query 2 rows of this run: the customers are (still) in the segment."""
        if not self._tracks_seen:
            return
        with self._lock:
            self._seen.extend((str(customer_id),) for customer_id in customer_ids)
            if len(self._seen) >= SEEN_BATCH:
                self._flush_seen()

    def _flush_seen(self) -> None:
        if self._seen:
            self._run(_INSERT_SEEN, self._seen)
            self._seen = []

    # -- what Iterable accepted ---------------------------------------------------------

    def users_accepted(self, users: Sequence[AcceptedUser]) -> None:
        """Iterable accepted these profiles; a refusal on record (when the caller knows
        of one) no longer holds. Written as two statements, not a pair a row."""
        now = _now()
        self._write_many(
            _UPSERT_USERS,
            [
                (
                    str(user.customer_id),
                    user.fingerprint,
                    user.email,
                    _json(user.profile),
                    int(user.in_segment),
                    now,
                )
                for user in users
            ],
        )
        cleared = [(str(user.customer_id),) for user in users if user.clear_refusal]
        if cleared:
            self._write_many("DELETE FROM rejections WHERE customer_id = ?", cleared, count=False)

    def email_moved(self, customer_id: int, old: str, new: str) -> None:
        """Iterable moved the profile from `old` to `new`, with its list memberships: durable
        at once, as a resend would otherwise look for the profile under the old email."""
        key = str(customer_id)
        with self._lock:
            self._enqueue(
                "UPDATE users SET email = ?, fingerprint = NULL WHERE customer_id = ?",
                [(new, key)],
            )
            self._enqueue(
                "UPDATE list_members SET identifier = ? WHERE customer_id = ? AND identifier = ?",
                [(new, key, old)],
            )
            self._enqueue("DELETE FROM unsure_moves WHERE customer_id = ?", [(key,)])
            self._commit()

    def move_unsure(self, customer_id: int, email: str | None) -> None:
        """An email move to `email` may or may not have happened (None: settled either way);
        durable at once, as the next move must find out where the profile is first."""
        key = str(customer_id)
        with self._lock:
            if email is None:
                self._enqueue("DELETE FROM unsure_moves WHERE customer_id = ?", [(key,)])
            else:
                self._enqueue(
                    "INSERT OR REPLACE INTO unsure_moves (customer_id, email, started_at) "
                    "VALUES (?, ?, ?)",
                    [(key, email, _now())],
                )
            self._commit()

    def moved_away(self, customer_id: int, email: str, forgotten_email: str | None = None) -> None:
        """The profile under the customer's old email is gone (forgotten, or not found) with
        its events and lists, and one is about to be created under `email`: durable at once,
        as a resend after a crash must look for it there, not create a second one."""
        key = str(customer_id)
        with self._lock:
            for statement in (
                "DELETE FROM events WHERE customer_id = ?",
                "DELETE FROM list_members WHERE customer_id = ?",
                "DELETE FROM forgotten WHERE customer_id = ?",
                "DELETE FROM unsure_moves WHERE customer_id = ?",
            ):
                self._enqueue(statement, [(key,)])
            self._enqueue(
                "INSERT INTO users (customer_id, fingerprint, email, profile, in_segment, "
                "accepted_at) VALUES (?, NULL, ?, NULL, 1, ?) ON CONFLICT(customer_id) DO "
                "UPDATE SET fingerprint = NULL, email = excluded.email, profile = NULL",
                [(key, email, _now())],
            )
            if forgotten_email is not None:
                self._enqueue(
                    "INSERT INTO forgotten (customer_id, email, forgotten_at) VALUES (?, ?, ?)",
                    [(key, forgotten_email, _now())],
                )
            self._commit()

    def event_accepted(self, event_id: str, customer_id: int) -> None:
        self.events_accepted([(event_id, customer_id)])

    def events_accepted(self, events: Sequence[tuple[str, int]]) -> None:
        """(event id, customer id) of events Iterable accepted; each replaces the customer's
        earlier one, so the state does not grow with time."""
        now = _now()
        self._write_many(
            _INSERT_EVENTS,
            [(str(customer_id), event_id, now) for event_id, customer_id in events],
        )

    def user_sending(self, customer_id: int, fingerprint: str) -> None:
        """Before a different profile is sent, forget the one recorded, durably.

        Iterable may apply an update whose answer never arrives (a timeout or a 5xx after
        the write, a kill before the next commit). The recorded fingerprint would then
        stand for a profile Iterable no longer holds, and a row that went back to those
        values would be skipped as unchanged. With no fingerprint the row is sent again.
        The email and segment membership stay: Iterable still has the profile.
        """
        with self._lock:
            self._flush_queue()
            forgot = self._execute(
                "UPDATE users SET fingerprint = NULL, profile = NULL "
                "WHERE customer_id = ? AND fingerprint IS NOT NULL AND fingerprint <> ?",
                (str(customer_id), fingerprint),
            )
            if forgot:
                self._commit()

    def refused(self, customer_id: int, fingerprint: str, reason: str) -> RecordedRefusal:
        """Record a permanent refusal; the first time is kept while the data is the same."""
        key, now = str(customer_id), _now()
        with self._lock:
            rows = self._query(
                "SELECT fingerprint, first_rejected_at FROM rejections WHERE customer_id = ?",
                (key,),
            )
        first = rows[0][1] if rows and rows[0][0] == fingerprint else now
        self._write(
            "INSERT OR REPLACE INTO rejections "
            "(customer_id, fingerprint, reason, rejected_at, first_rejected_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, fingerprint, reason, now, first),
        )
        return RecordedRefusal(fingerprint, reason, first)

    def forgotten(self, customer_id: int, email: str, profile_gone: bool = True) -> None:
        """Iterable says `email` was forgotten (GDPR): not sent again until the email changes.
        With `profile_gone`, the customer's profile was the one forgotten, with its events
        and lists; without, it still lives under the email the state has for it."""
        also = []
        if profile_gone:
            also = [
                "DELETE FROM users WHERE customer_id = ?",
                "DELETE FROM list_members WHERE customer_id = ?",
                "DELETE FROM events WHERE customer_id = ?",
                "DELETE FROM unsure_moves WHERE customer_id = ?",
            ]
        self._write(
            "INSERT OR REPLACE INTO forgotten (customer_id, email, forgotten_at) VALUES (?, ?, ?)",
            (str(customer_id), email, _now()),
            *also,
        )

    def forget_forgotten(self, customer_id: int) -> None:
        """The customer's email changed since Iterable forgot the old one."""
        self._write("DELETE FROM forgotten WHERE customer_id = ?", (str(customer_id),))

    def left(self, customer_id: int, profile: Mapping[str, Any] | None) -> None:
        """The customer left the segment and Iterable holds `profile` (None: unchanged)."""
        if profile is None:
            self._write(
                "UPDATE users SET in_segment = 0 WHERE customer_id = ?", (str(customer_id),)
            )
        else:
            self._write(
                "UPDATE users SET in_segment = 0, profile = ?, fingerprint = NULL "
                "WHERE customer_id = ?",
                (_json(profile), str(customer_id)),
            )

    def deleted(self, customer_id: int, in_iterable: bool = False) -> None:
        """The customer is gone from the database. With `in_iterable`, from Iterable too,
        with their events, so nothing the state holds for them stands any more. Without,
        their profile stays in Iterable: the state keeps where it is (a customer who comes
        back, with a new email say, is moved, not sent as a second profile), out of the
        segment, and on the list until an unsubscribe of it goes through."""
        key = str(customer_id)
        if not in_iterable:
            self._write(
                "UPDATE users SET in_segment = 0 WHERE customer_id = ?",
                (key,),
                "DELETE FROM rejections WHERE customer_id = ?",
            )
            return
        self._write(
            "DELETE FROM users WHERE customer_id = ?",
            (key,),
            "DELETE FROM rejections WHERE customer_id = ?",
            "DELETE FROM unsure_moves WHERE customer_id = ?",
            "DELETE FROM events WHERE customer_id = ?",
            "DELETE FROM forgotten WHERE customer_id = ?",
            "DELETE FROM list_members WHERE customer_id = ?",
        )

    def subscribed(self, customer_id: int, identifier: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO list_members (list_id, customer_id, identifier) "
            "VALUES (?, ?, ?)",
            (self.list_id, str(customer_id), identifier),
        )

    def unsubscribed(self, customer_id: int) -> None:
        self._write(
            "DELETE FROM list_members WHERE list_id = ? AND customer_id = ?",
            (self.list_id, str(customer_id)),
        )

    # -- run history ----------------------------------------------------------------------

    def record_results(self, run_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows of this run's results file, in its order, for sync_results: written with the
        state's next commit, as the run goes, so the end of a big run has no history to
        write and no results file to read back. Called by one thread at a time."""
        first = self._history_rows
        self._history_rows += len(rows)
        history = [_history_row(run_id, first + n, row) for n, row in enumerate(rows)]
        with self._lock:
            self._enqueue(_INSERT_RESULTS, history)
            self._changed(0)  # a commit a second, even when nothing else changes

    def record_run(
        self, run: Mapping[str, Any], summary: Mapping[str, Any], exit_code: int
    ) -> None:
        """The run's row of sync_runs, committed at once (its results rows went before)."""
        run_id = str(run.get("run_id"))
        with self._lock:
            self._enqueue(
                _INSERT_RUN,
                [
                    (
                        run_id,
                        _history_time(run.get("started_at")),
                        _history_time(run.get("finished_at")),
                        exit_code,
                        run.get("mode"),
                        int(bool(run.get("dry_run"))),
                        summary.get("total"),
                        summary.get("succeeded"),
                        summary.get("failed"),
                        summary.get("skipped"),
                        summary.get("outstanding"),
                        summary.get("left"),
                        run.get("aborted") or None,
                        run.get("version"),
                    )
                ],
            )
            self._commit()

    def remove_runs_before(self, cutoff: datetime) -> int:
        """Remove the history of runs that started before `cutoff`; how many runs went."""
        before = cutoff.astimezone(UTC).strftime(HISTORY_TIME)
        with self._lock:
            self._flush_queue()
            self._execute(
                "DELETE FROM sync_results WHERE run_id IN "
                "(SELECT run_id FROM sync_runs WHERE started_at < ?)",
                (before,),
            )
            removed = self._execute("DELETE FROM sync_runs WHERE started_at < ?", (before,))
            self._commit()
        return removed

    # -- transactions -------------------------------------------------------------------

    def _write(self, sql: str, params: tuple[object, ...], *same_customer: str) -> None:
        """One change, plus statements about the same customer (params[0]) with it."""
        with self._lock:
            self._enqueue(sql, [params])
            for statement in same_customer:
                self._enqueue(statement, [(params[0],)])
            self._changed(1)

    def _write_many(
        self, sql: Statement, rows: Sequence[tuple[object, ...]], count: bool = True
    ) -> None:
        """The same statement for many rows; counted as that many changes unless `count` is
        off (a statement that goes with changes already counted)."""
        if not rows:
            return
        with self._lock:
            self._enqueue(sql, rows)
            self._changed(len(rows) if count else 0)

    def _enqueue(self, sql: Statement, rows: Iterable[tuple[object, ...]]) -> None:
        """Queue a statement's rows, joining the run of the same statement queued last."""
        if self._queue and self._queue[-1][0] == sql:
            self._queue[-1][1].extend(rows)
        else:
            self._queue.append((sql, list(rows)))

    def _changed(self, changes: int) -> None:
        self._pending += changes
        if (
            self._pending >= COMMIT_EVERY_CHANGES
            or time.monotonic() - self._last_commit >= COMMIT_EVERY_SECONDS
        ):
            self._commit()

    def _flush_queue(self) -> None:
        for statement, rows in self._queue:
            self._run(statement, rows)
        self._queue = []

    def _commit(self) -> None:
        self._flush_queue()
        self._commit_transaction()
        self._pending = 0
        self._last_commit = time.monotonic()

    def flush(self) -> None:
        with self._lock:
            self._commit()

    def close(self) -> None:
        with self._lock:
            self._flush_queue()
            self._disconnect(commit=True)

    def abandon(self) -> None:
        """Close without committing, as a crash would: acknowledgements since the last
        commit are lost. For tests that simulate a killed run in process."""
        with self._lock:
            self._disconnect(commit=False)


class SyncState(StateStore):
    """The state in a SQLite file: the embedded store, for a host that keeps its disk."""

    def __init__(
        self, path: Path, list_id: int | None = None, results_dir: Path | None = None
    ) -> None:
        self.path = path
        self.where = str(path)
        super().__init__(list_id, results_dir)

    def _open(self) -> None:
        path = self.path
        fresh = not path.exists()
        if fresh:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self.warnings += _upgrade(db, path, self.results_dir)
            # This run's Query 2 customers: who is still in the segment.
            db.execute("CREATE TEMP TABLE seen (customer_id TEXT PRIMARY KEY) WITHOUT ROWID")
            db.execute("BEGIN")
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"sync state {path} is unreadable ({exc}); move it away to start over "
                "(the next run will then send every qualifying user again)"
            ) from None
        self._db = db

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, params).fetchall()

    def _execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self._db.execute(sql, params).rowcount

    def _run(self, statement: Statement, rows: Sequence[tuple[object, ...]]) -> None:
        if isinstance(statement, RowInsert):
            statement.run(self._db, rows)
        else:
            self._db.executemany(statement, rows)

    def _known_rows(self, chunk: Sequence[tuple[int, str]]) -> list[tuple[Any, ...]]:
        params: list[str] = [self.list_id]
        for customer_id, event_id in chunk:
            params += (str(customer_id), event_id)
        return self._db.execute(_known_sql(len(chunk)), params).fetchall()

    def _commit_transaction(self) -> None:
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")

    def _disconnect(self, commit: bool) -> None:
        if commit:
            self._db.execute("COMMIT")
        self._db.close()


def _upgrade(db: sqlite3.Connection, path: Path, results_dir: Path | None) -> list[str]:
    """Create the schema, or migrate an older file in place (never discard it); returns
    warnings for the run. A migration and its version mark are one transaction, so a crash
    cannot leave a half-migrated file or run a migration twice."""
    version = _schema_version(db)
    if version > SCHEMA_VERSION:
        db.close()
        raise StateError(newer_schema(str(path), version))
    warnings: list[str] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        if version == 1:
            _script(db, _MIGRATE_FROM_1.format(schema=_SCHEMA))
            warnings += _recover_emails(db, results_dir)
        elif version == 2:
            _script(db, _MIGRATE_FROM_2.format(schema=_SCHEMA))
        else:
            _script(db, _SCHEMA)
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return warnings


def newer_schema(where: str, version: int) -> str:
    return (
        f"sync state {where} was written by a newer version (schema {version}, "
        f"this one knows {SCHEMA_VERSION}); upgrade, or move the state away to start over"
    )


def _script(db: sqlite3.Connection, script: str) -> None:
    """Statements one at a time: executescript would commit the migration's transaction."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


# Times in the history tables: UTC, in a form both SQLite's and MySQL's date functions read.
HISTORY_TIME = "%Y-%m-%d %H:%M:%S"


def _history_time(value: object) -> str | None:
    """An ISO 8601 time from a results file ("...T...+00:00" or "...Z") as HISTORY_TIME."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime(HISTORY_TIME)


def _http_status(call: object) -> int | None:
    status = call.get("http_status") if type(call) is dict else None
    return status if type(status) is int else None


def _history_row(run_id: str, number: int, row: Mapping[str, Any]) -> tuple[object, ...]:
    """A results file row as sync_results holds it (this runs once a row: a call a column
    cost a measurable share of bulk mode's CPU)."""
    get = row.get
    customer_id, failing_since, user_update, event_track, update_email = (
        get("customer_id"),
        get("failing_since"),
        get("user_update"),
        get("event_track"),
        get("update_email"),
    )
    return (
        run_id,
        number,
        None if customer_id is None else str(customer_id),
        get("email"),
        get("segment"),
        get("status"),
        get("reason"),
        get("detail"),
        1 if get("outstanding") else 0,
        None if failing_since is None else _history_time(failing_since),
        None if user_update is None else _http_status(user_update),
        None if event_track is None else _http_status(event_track),
        None if update_email is None else _http_status(update_email),
    )


def _recover_emails(db: sqlite3.Connection, results_dir: Path | None) -> list[str]:
    """Version 1 kept no emails: each profile's email is the last one a results file shows
    Iterable accepted (sent, or unchanged since it was). Without it an email change would
    send the customer as a new profile, a second one Iterable cannot merge back."""
    missing = {row[0] for row in db.execute("SELECT customer_id FROM users WHERE email IS NULL")}
    found: dict[str, str] = {}
    for results_file in sorted((results_dir or Path()).glob(RESULTS_FILES), reverse=True):
        if not missing - found.keys():
            break
        for customer_id, email in _accepted_emails(results_file):
            if customer_id in missing and customer_id not in found:
                found[customer_id] = email
    db.executemany(
        "UPDATE users SET email = ? WHERE customer_id = ?",
        [(email, customer_id) for customer_id, email in found.items()],
    )
    unknown = len(missing) - len(found)
    log.info(
        "sync state upgraded: emails recovered for %d of %d customers", len(found), len(missing)
    )
    if not unknown:
        return []
    warning = (
        f"the sync state was written by an earlier version, which kept no emails, and no "
        f"results file in {results_dir} shows the email of {unknown} of its customers: "
        "if one of them changes email, Iterable gets a second profile for them"
    )
    log.warning("%s", warning)
    return [warning]


def _accepted_emails(results_file: Path) -> Iterator[tuple[str, str]]:
    """(customer id, email) of each row of a results file whose profile Iterable holds."""
    try:
        rows = json.loads(results_file.read_bytes()).get("results") or []
    except (OSError, ValueError, AttributeError):
        log.warning("results file %s is unreadable; skipped", results_file)
        return
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("email"), str):
            continue
        update = row.get("user_update") or {}
        accepted = (
            row.get("status") == "success"
            or row.get("reason") == "unchanged"
            or (isinstance(update, dict) and update.get("http_status") == 200)
        )
        if accepted and row.get("customer_id") is not None:
            yield str(row["customer_id"]), row["email"]


def _schema_version(db: sqlite3.Connection) -> int:
    has_meta = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if not has_meta:
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]) if row else 0
    except ValueError:
        raise StateError("sync state has an unreadable schema version") from None


def _known(row: tuple[Any, ...]) -> Known:
    return Known(
        user_fingerprint=row[1],
        email=row[2],
        event_accepted=bool(row[3]),
        refusal=RecordedRefusal(row[4], row[5], row[6]) if row[4] is not None else None,
        forgotten_email=row[7],
        list_identifier=row[8],
        unsure_move=row[9],
    )


def _member(row: tuple[Any, ...]) -> Member:
    return Member(
        customer_id=int(row[0]),
        email=row[1],
        profile=json.loads(row[2]) if row[2] else None,
        list_identifier=row[3],
        unsure_move=row[4],
    )


def _json(value: Mapping[str, Any]) -> str:
    return canonical_json(value)


_clock: tuple[int, str] = (0, "")


def _now() -> str:
    """The time to the second, formatted once a second rather than once a write."""
    global _clock
    second = int(time.time())
    if _clock[0] != second:
        _clock = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _clock[1]
