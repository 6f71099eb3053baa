"""Sync state: what Iterable has accepted, kept in SQLite so a run sends only what changed.

The state only ever moves forward after Iterable said yes. A crash before a commit
loses at most the last few acknowledgements, and those rows are simply sent again:
both writes are idempotent (a profile merge, an event with a fixed id), so a resend
has no further effect in Iterable.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA_VERSION = 1
# Commit at least this often, so a kill loses little acknowledged work.
COMMIT_EVERY_SECONDS = 1.0
COMMIT_EVERY_CHANGES = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    customer_id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    accepted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    accepted_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    customer_id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    reason TEXT NOT NULL,
    rejected_at TEXT NOT NULL
);
"""


class StateError(Exception):
    """The state file is corrupt or from a newer version; the message says what to do."""


@dataclass(frozen=True)
class Known:
    """What the state says about one row before it is sent."""

    user_fingerprint: str | None
    event_accepted: bool
    rejection: tuple[str, str] | None  # (fingerprint, reason)


class SyncState:
    """A thread-safe view of the state file; writes are batched into short transactions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pending = 0
        self._last_commit = time.monotonic()
        self._db = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        fresh = not path.exists()
        if fresh:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            version = _schema_version(db)
            if version > SCHEMA_VERSION:
                db.close()
                raise StateError(
                    f"sync state {path} was written by a newer version (schema {version}, "
                    f"this one knows {SCHEMA_VERSION}); upgrade, or move the file away "
                    "to start over"
                )
            db.executescript(_SCHEMA)
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            db.execute("BEGIN")
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"sync state {path} is unreadable ({exc}); move it away to start over "
                "(the next run will then send every qualifying user again)"
            ) from None
        return db

    def known(self, customer_id: int, event_id: str) -> Known:
        with self._lock:
            user = self._db.execute(
                "SELECT fingerprint FROM users WHERE customer_id = ?", (customer_id,)
            ).fetchone()
            event = self._db.execute(
                "SELECT 1 FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
            rejection = self._db.execute(
                "SELECT fingerprint, reason FROM rejections WHERE customer_id = ?", (customer_id,)
            ).fetchone()
        return Known(
            user[0] if user else None, event is not None, tuple(rejection) if rejection else None
        )

    def rejection(self, customer_id: int) -> tuple[str, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT fingerprint, reason FROM rejections WHERE customer_id = ?", (customer_id,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def user_accepted(self, customer_id: int, fingerprint: str) -> None:
        self._write(
            "INSERT INTO users (customer_id, fingerprint, accepted_at) VALUES (?, ?, ?) "
            "ON CONFLICT(customer_id) DO UPDATE SET fingerprint = excluded.fingerprint, "
            "accepted_at = excluded.accepted_at",
            (customer_id, fingerprint, _now()),
            clear_rejection=customer_id,
        )

    def event_accepted(self, event_id: str, customer_id: int) -> None:
        self._write(
            "INSERT OR REPLACE INTO events (event_id, customer_id, accepted_at) VALUES (?, ?, ?)",
            (event_id, customer_id, _now()),
        )

    def user_sending(self, customer_id: int, fingerprint: str) -> None:
        """Before a different profile is sent, forget the one recorded, durably.

        Iterable may apply an update whose answer never arrives (a timeout or a 5xx after
        the write, a kill before the next commit). The recorded fingerprint would then
        stand for a profile Iterable no longer holds, and a row that went back to those
        values would be skipped as unchanged. With no fingerprint the row is sent again.
        """
        with self._lock:
            forgot = self._db.execute(
                "DELETE FROM users WHERE customer_id = ? AND fingerprint <> ?",
                (customer_id, fingerprint),
            ).rowcount
            if forgot:
                self._commit()

    def rejected(self, customer_id: int, fingerprint: str, reason: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO rejections (customer_id, fingerprint, reason, rejected_at) "
            "VALUES (?, ?, ?, ?)",
            (customer_id, fingerprint, reason, _now()),
        )

    def _write(
        self, sql: str, params: tuple[object, ...], clear_rejection: int | None = None
    ) -> None:
        with self._lock:
            self._db.execute(sql, params)
            if clear_rejection is not None:
                self._db.execute("DELETE FROM rejections WHERE customer_id = ?", (clear_rejection,))
            self._pending += 1
            if (
                self._pending >= COMMIT_EVERY_CHANGES
                or time.monotonic() - self._last_commit >= COMMIT_EVERY_SECONDS
            ):
                self._commit()

    def _commit(self) -> None:
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")
        self._pending = 0
        self._last_commit = time.monotonic()

    def flush(self) -> None:
        with self._lock:
            self._commit()

    def close(self) -> None:
        with self._lock:
            self._db.execute("COMMIT")
            self._db.close()

    def abandon(self) -> None:
        """Close without committing, as a crash would: acknowledgements since the last
        commit are lost. For tests that simulate a killed run in process."""
        with self._lock:
            self._db.close()


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


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
