"""The sync state in MySQL (STATE_STORE=mysql): for schedules that keep no disk between
runs (a Kubernetes CronJob, a CI runner), with one lock for every host.

MySQLState runs the statements sync_state.StateStore holds, translated once each to
MySQL's spelling; the tables are those of sql/state_schema.sql, created on first use when
the account may. StoreLock holds GET_LOCK for the whole run on a connection of its own.
`copy_state` moves a SQLite state in; `check_store` is --check's part.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import mysql.connector
from mysql.connector import errorcode

from db_connection import ConnectionSettings, DatabaseConnection, DatabaseError, describe_error
from sync_state import (
    KNOWN_SELECT,
    SCHEMA_VERSION,
    STATE_TABLES,
    RowInsert,
    StateError,
    Statement,
    StateStore,
    SyncState,
    newer_schema,
)

log = logging.getLogger(__name__)

SCHEMA_FILE = Path(__file__).resolve().parent / "sql" / "state_schema.sql"
# Rows a multi-row statement: far under max_allowed_packet with 2 kB profiles.
ROWS_PER_STATEMENT = 500
# The lock's connection: idle between checks, so the server must not end it as idle
# (wait_timeout, 8 hours by default, less on many hosted servers)...
LOCK_WAIT_TIMEOUT = 7 * 24 * 3600
# ... and it is checked this often: a lost lock stops the run within this time.
LOCK_CHECK_SECONDS = 5.0
# The tables a state has; `seen` is the run in progress.
MYSQL_TABLES = (*STATE_TABLES, "seen")
# Errors that say the account may not do something, not that the server failed.
DENIED = frozenset(
    {
        errorcode.ER_TABLEACCESS_DENIED_ERROR,
        errorcode.ER_DBACCESS_DENIED_ERROR,
        errorcode.ER_SPECIFIC_ACCESS_DENIED_ERROR,
    }
)

_TRANSLATIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bINSERT OR REPLACE\b"), "REPLACE"),
    (re.compile(r"\bINSERT OR IGNORE\b"), "INSERT IGNORE"),
    (re.compile(r"\bON CONFLICT\s*\(\w+\)\s*DO UPDATE SET\b"), "ON DUPLICATE KEY UPDATE"),
    (re.compile(r"\bexcluded\.(\w+)"), r"VALUES(\1)"),
    (re.compile(r"\?"), "%s"),
)


@functools.cache
def mysql_sql(sql: str) -> str:
    """A StateStore statement (SQLite's spelling) as MySQL and MariaDB take it."""
    for pattern, replacement in _TRANSLATIONS:
        sql = pattern.sub(replacement, sql)
    return sql


@functools.cache
def _insert_sql(insert: RowInsert, rows: int) -> str:
    row = "(" + ", ".join(["%s"] * insert.columns) + ")"
    return " ".join([mysql_sql(insert.head), ", ".join([row] * rows), mysql_sql(insert.tail)])


@functools.cache
def _known_sql(rows: int) -> str:
    """KNOWN_SELECT over the chunk's pairs; UNION ALL, as MySQL 8 and MariaDB spell a row
    constructor differently."""
    pairs = " UNION ALL ".join(["SELECT %s, %s"] * rows)
    return f"WITH k (id, event_id) AS ({pairs}) " + KNOWN_SELECT.format(list_id="%s")


# A statement about one customer, run for many: one DELETE ... IN (...) instead of a
# round trip a row.
_ONE_CUSTOMER = re.compile(r"^(DELETE FROM \w+ WHERE customer_id) = \?$")


def schema_statements() -> list[str]:
    """The statements of sql/state_schema.sql, without its comments."""
    text = "\n".join(
        line
        for line in SCHEMA_FILE.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("--")
    )
    return [statement.strip() for statement in text.split(";") if statement.strip()]


class MySQLState(StateStore):
    """The state in tables of a MySQL database, over the source's connection settings."""

    def __init__(
        self,
        settings: ConnectionSettings,
        list_id: int | None = None,
        results_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.where = f"MySQL database {settings.database} at {settings.endpoint()}"
        super().__init__(list_id, results_dir)

    def _open(self) -> None:
        self._connection = connect(self.settings)
        self._db = self._connection.connection
        self._cursor = self._db.cursor()
        try:
            create_tables(self._cursor, self.settings)
            self._db.autocommit = False
            self._cursor.execute("DELETE FROM seen")  # a crashed run's customers
            self._db.commit()
        except mysql.connector.Error as exc:
            self._connection.close()
            raise DatabaseError(describe_error(exc, self.settings)) from None

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        try:
            self._cursor.execute(mysql_sql(sql), tuple(params))
            return list(self._cursor.fetchall())
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, self.settings)) from None

    def _execute(self, sql: str, params: Sequence[object] = ()) -> int:
        try:
            self._cursor.execute(mysql_sql(sql), tuple(params))
            return int(self._cursor.rowcount)
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, self.settings)) from None

    def _run(self, statement: Statement, rows: Sequence[tuple[object, ...]]) -> None:
        try:
            if isinstance(statement, RowInsert):
                for start in range(0, len(rows), ROWS_PER_STATEMENT):
                    chunk = rows[start : start + ROWS_PER_STATEMENT]
                    self._cursor.execute(
                        _insert_sql(statement, len(chunk)), list(itertools.chain(*chunk))
                    )
                return
            one_customer = _ONE_CUSTOMER.match(statement)
            if one_customer and len(rows) > 1:
                for start in range(0, len(rows), ROWS_PER_STATEMENT):
                    ids = [row[0] for row in rows[start : start + ROWS_PER_STATEMENT]]
                    marks = ", ".join(["%s"] * len(ids))
                    self._cursor.execute(f"{one_customer.group(1)} IN ({marks})", ids)
                return
            sql = mysql_sql(statement)
            for params in rows:
                self._cursor.execute(sql, params)
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, self.settings)) from None

    def _known_rows(self, chunk: Sequence[tuple[int, str]]) -> list[tuple[Any, ...]]:
        params: list[str] = []
        for customer_id, event_id in chunk:
            params += (str(customer_id), event_id)
        params.append(self.list_id)
        return self._query_translated(_known_sql(len(chunk)), params)

    def _query_translated(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            self._cursor.execute(sql, tuple(params))
            return list(self._cursor.fetchall())
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, self.settings)) from None

    def _commit_transaction(self) -> None:
        try:
            self._db.commit()
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, self.settings)) from None

    def _disconnect(self, commit: bool) -> None:
        try:
            if commit:
                self._cursor.execute("DELETE FROM seen")
                self._db.commit()
            else:
                self._db.rollback()
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, self.settings)) from None
        finally:
            self._connection.close()


def connect(settings: ConnectionSettings) -> DatabaseConnection:
    """A connection to the state database that compares text byte for byte, as SQLite does."""
    connection = DatabaseConnection(settings)
    connection.connect()
    connection.execute("SET NAMES utf8mb4 COLLATE utf8mb4_bin")
    return connection


def missing_tables(cursor: Any) -> list[str]:
    cursor.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
    )
    present = {str(row[0]).lower() for row in cursor.fetchall()}
    return [table for table in MYSQL_TABLES if table not in present]


def create_tables(cursor: Any, settings: ConnectionSettings) -> None:
    """Create the tables that are missing, or say how a DBA does; refuse a newer schema."""
    missing = missing_tables(cursor)
    if missing:
        try:
            for statement in schema_statements():
                cursor.execute(statement)
        except mysql.connector.Error as exc:
            if exc.errno not in DENIED:
                raise
            raise StateError(
                f"the state tables ({', '.join(missing)}) are missing from MySQL database "
                f"{settings.database} and {settings.user} may not create them: run "
                "sql/state_schema.sql there as an administrator"
            ) from None
        log.info("created the sync state tables in MySQL database %s", settings.database)
    cursor.execute("SELECT value FROM meta WHERE `key` = 'schema_version'")
    row = cursor.fetchone()
    version = int(row[0]) if row and str(row[0]).isdigit() else SCHEMA_VERSION
    if version > SCHEMA_VERSION:
        raise StateError(newer_schema(f"in MySQL database {settings.database}", version))
    if row is None:
        cursor.execute(
            "INSERT IGNORE INTO meta (`key`, value) VALUES ('schema_version', %s)",
            (str(SCHEMA_VERSION),),
        )


# -- one lock for every host ----------------------------------------------------------------


def lock_name(database: str) -> str:
    """The GET_LOCK name of a state database (at most 64 characters, MySQL's limit)."""
    name = f"iterable-sync:{database}"
    if len(name) <= 64:
        return name
    return "iterable-sync:" + hashlib.sha256(database.encode()).hexdigest()[:48]


class LockTaken(Exception):
    """Another run, on this host or another, holds the state's lock."""


class StoreLock:
    """GET_LOCK on a connection of its own, held for the whole run and checked every
    LOCK_CHECK_SECONDS: a connection the server ends takes its lock with it, and then
    `on_lost` is called (the run stops sending) and `lost` says why."""

    def __init__(self, settings: ConnectionSettings, on_lost: Callable[[], None]) -> None:
        self.settings = settings
        self.name = lock_name(settings.database)
        self.on_lost = on_lost
        self.lost: str | None = None
        self._done = threading.Event()
        self._connection: DatabaseConnection | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StoreLock:
        connection = DatabaseConnection(self.settings)
        connection.connect()
        connection.execute("SET SESSION wait_timeout = %s", (LOCK_WAIT_TIMEOUT,))
        if connection.scalar("SELECT GET_LOCK(%s, 0)", (self.name,)) != 1:
            connection.close()
            raise LockTaken(
                f"another run holds the lock {self.name} on MySQL at "
                f"{self.settings.endpoint()}; not starting"
            )
        self._connection = connection
        self._thread = threading.Thread(target=self._watch, name="state-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if self._connection is not None:
            with contextlib.suppress(DatabaseError):
                self._connection.execute("DO RELEASE_LOCK(%s)", (self.name,))
            self._connection.close()

    def _watch(self) -> None:
        assert self._connection is not None
        while not self._done.wait(LOCK_CHECK_SECONDS):
            try:
                held = self._connection.scalar(
                    "SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (self.name,)
                )
            except DatabaseError as exc:
                held, problem = 0, str(exc)
            else:
                problem = "the lock is held by another connection"
            if held != 1:
                self.lost = (
                    f"lost the lock {self.name} on MySQL ({problem}); stopped sending, as "
                    "another run may start"
                )
                log.error("%s", self.lost)
                self.on_lost()
                return


# -- moving a SQLite state in ------------------------------------------------------------------


def copy_state(source: Path, settings: ConnectionSettings, force: bool) -> dict[str, int]:
    """Copy every table of the SQLite state `source` (upgraded first, as a run would) into
    the MySQL store; refuses a store that holds a state unless `force`. Rows copied, by
    table."""
    if not source.is_file():
        raise StateError(f"{source} is not a SQLite state file")
    SyncState(source).close()  # creates nothing new: upgrades an older file in place
    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    connection = connect(settings)
    db = connection.connection
    cursor = db.cursor()
    copied: dict[str, int] = {}
    try:
        create_tables(cursor, settings)
        db.autocommit = False
        if not force and holds_state(cursor):
            raise StateError(
                f"MySQL database {settings.database} already holds a sync state; "
                "add --force to replace it"
            )
        for table in reversed(MYSQL_TABLES):
            cursor.execute(f"DELETE FROM {table}")
        for table in STATE_TABLES:
            columns = [row[1] for row in reader.execute(f"PRAGMA table_info({table})")]
            names = ", ".join(f"`{column}`" for column in columns)
            rows = reader.execute(f"SELECT {names} FROM {table}").fetchall()
            insert = RowInsert(f"INSERT INTO {table} ({names}) VALUES", len(columns))
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                chunk = rows[start : start + ROWS_PER_STATEMENT]
                cursor.execute(_insert_sql(insert, len(chunk)), list(itertools.chain(*chunk)))
            copied[table] = len(rows)
        db.commit()
    except mysql.connector.Error as exc:
        db.rollback()
        raise DatabaseError(describe_error(exc, settings)) from None
    finally:
        reader.close()
        connection.close()
    return copied


def holds_state(cursor: Any) -> bool:
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM events) "
        "OR EXISTS (SELECT 1 FROM rejections) OR EXISTS (SELECT 1 FROM forgotten) "
        "OR EXISTS (SELECT 1 FROM list_members) OR EXISTS (SELECT 1 FROM sync_runs)"
    )
    return bool(cursor.fetchone()[0])


# -- --check -----------------------------------------------------------------------------------


def check_store(settings: ConnectionSettings) -> Iterator[str]:
    """--check's lines for the MySQL store; raises DatabaseError at the first failure."""
    connection = connect(settings)
    try:
        yield f"connected to {settings.where()} as {settings.user}"
        db = connection.connection
        cursor = db.cursor()
        missing = missing_tables(cursor)
        if missing and not may_create(cursor, settings.database):
            raise DatabaseError(
                f"the state tables ({', '.join(missing)}) are missing and {settings.user} "
                "may not create them: run sql/state_schema.sql in "
                f"{settings.database} as an administrator"
            )
        if missing:
            yield f"tables missing ({', '.join(missing)}); the first run creates them"
        else:
            yield "tables present"
            try:
                db.start_transaction()
                cursor.execute(
                    "INSERT INTO meta (`key`, value) VALUES ('check', 'check') "
                    "ON DUPLICATE KEY UPDATE value = 'check'"
                )
                cursor.execute("DELETE FROM seen WHERE customer_id = 'check'")
                db.rollback()
            except mysql.connector.Error as exc:
                raise DatabaseError(
                    f"cannot write the state tables: {describe_error(exc, settings)}"
                ) from None
            yield "can write (a write, then a rollback)"
        name = lock_name(settings.database)
        if connection.scalar("SELECT IS_FREE_LOCK(%s)", (name,)) == 1:
            yield f"the lock {name} is free"
        else:
            raise DatabaseError(f"the lock {name} is held: a run is in progress")
    finally:
        connection.close()


def may_create(cursor: Any, database: str) -> bool:
    """Whether the account holds CREATE on `database` (or on every database)."""
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.schema_privileges "
        "WHERE privilege_type = 'CREATE' AND %s LIKE table_schema) "
        "OR EXISTS (SELECT 1 FROM information_schema.user_privileges "
        "WHERE privilege_type = 'CREATE')",
        (database,),
    )
    return bool(cursor.fetchone()[0])
