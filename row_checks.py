"""Checks across rows: the same email on two customers is sent once, for the first customer."""

from __future__ import annotations

import sqlite3


class DuplicateEmails:
    """Remembers which customer each email was sent for in this run.

    A million emails in a Python set would cost more memory than the rest of the run,
    so they live in a private temporary SQLite database that spills to disk.
    """

    def __init__(self) -> None:
        # "" opens a temporary on-disk database that SQLite deletes on close.
        self._db = sqlite3.connect("", check_same_thread=False)
        self._db.execute("PRAGMA cache_size = -2048")
        self._db.execute(
            "CREATE TABLE seen (email TEXT PRIMARY KEY, customer_id INTEGER) WITHOUT ROWID"
        )

    def first_time(self, email: str, customer_id: int) -> bool:
        """True if no earlier customer of this run had this email; remembers this one."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO seen (email, customer_id) VALUES (?, ?)", (email, customer_id)
        )
        return cursor.rowcount == 1

    def owner(self, email: str) -> int | None:
        row = self._db.execute("SELECT customer_id FROM seen WHERE email = ?", (email,)).fetchone()
        return int(row[0]) if row else None

    def close(self) -> None:
        self._db.close()
