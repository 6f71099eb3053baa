"""MySQL access: one connection, UTC session, Query 2 from sql/, streamed a fetch at a time."""

from __future__ import annotations

import logging
import math
import operator
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import mysql.connector
from mysql.connector import errorcode
from mysql.connector.constants import FieldType

from payloads import (
    ROW_ASSUMPTIONS,
    TEXT_COLUMNS,
    Customer,
    SourceRow,
    UnreadableRow,
    customer_id_of,
    decode_texts,
)

log = logging.getLogger(__name__)

QUERIES_FILE = Path(__file__).resolve().parent / "sql" / "phase2_queries.sql"
# Query 2 as the job runs it; the file's query2 is the reference it matches row for row.
SYNC_QUERY = "query2_per_customer"
FETCH_SIZE = 1000
# MySQL drops a client that stops reading for net_write_timeout seconds (60 by default).
# While Iterable is slow or rate limited we may not read for a while, so the session
# asks for longer; the read-ahead buffer in the sync covers the usual pauses.
SESSION_NET_WRITE_TIMEOUT = 3600
READ_TIMEOUT_SECONDS = 600

# Customers who left the segment, read back by id; the ids are bound, never formatted in.
CUSTOMERS_BY_ID = (
    "SELECT id AS customer_id, email, first_name, last_name, plan_type "
    "FROM customers WHERE id IN ({placeholders})"
)
CUSTOMERS_CHUNK = 1000

_NAME_MARKER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


class DatabaseError(Exception):
    """The database could not be reached or queried; the message is one line for the user."""


@dataclass(frozen=True)
class ConnectionSettings:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    connect_timeout: float = 10.0
    ssl_ca: Path | None = None
    ssl_verify_identity: bool = False
    unix_socket: Path | None = None  # when set, host and port are not used

    def endpoint(self) -> str:
        """host:port, or the socket's path."""
        return str(self.unix_socket) if self.unix_socket else f"{self.host}:{self.port}"

    def transport(self) -> str:
        if self.unix_socket:
            return f"the Unix socket {self.unix_socket}"
        return f"TCP {self.host}:{self.port}"

    def where(self) -> str:
        if self.unix_socket:
            return f"{self.unix_socket} (database {self.database})"
        return f"{self.host}:{self.port}/{self.database}"


def load_query(name: str, path: Path = QUERIES_FILE) -> str:
    """The text of one `-- name: X` block of the queries file, without its closing semicolon."""
    text = path.read_text(encoding="utf-8")
    markers = list(_NAME_MARKER.finditer(text))
    for index, marker in enumerate(markers):
        if marker.group(1) == name:
            end = markers[index + 1].start() if index + 1 < len(markers) else len(text)
            return text[marker.end() : end].strip().rstrip(";").strip()
    raise DatabaseError(f"query {name!r} not found in {path}")


class DatabaseConnection:
    """A context-managed MySQL connection whose errors come out as one-line DatabaseErrors."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self._connection: Any = None

    def __enter__(self) -> DatabaseConnection:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "host": s.host,
            "port": s.port,
            "user": s.user,
            "password": s.password,
            "database": s.database,
            # Whole seconds: the C extension takes no fractions.
            "connection_timeout": max(1, math.ceil(s.connect_timeout)),
            "read_timeout": READ_TIMEOUT_SECONDS,
            "charset": "utf8mb4",
            "collation": "utf8mb4_unicode_ci",
            "time_zone": "+00:00",
            "autocommit": True,
            # The C extension decodes rows several times faster than the pure-Python
            # protocol (make bench); TLS is still checked after connecting, either way.
            "use_pure": not mysql.connector.HAVE_CEXT,
        }
        if s.unix_socket is not None:
            options["unix_socket"] = str(s.unix_socket)
        if s.ssl_ca is not None:
            options.update(
                ssl_ca=str(s.ssl_ca),
                ssl_verify_cert=True,
                ssl_verify_identity=s.ssl_verify_identity,
                ssl_disabled=False,
            )
        try:
            self._connection = mysql.connector.connect(**options)
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, s)) from None
        except (OSError, ValueError) as exc:
            raise DatabaseError(f"cannot connect to MySQL at {s.where()}: {exc}") from None
        tls = self._require_tls() if s.ssl_ca is not None else self._tls_session()
        self.execute("SET SESSION net_write_timeout = %s", (SESSION_NET_WRITE_TIMEOUT,))
        if tls is None:
            log.debug("connected to MySQL at %s without TLS", s.where())
        else:
            unverified = "" if s.ssl_ca else ", server certificate not verified (no MYSQL_SSL_CA)"
            log.debug("connected to MySQL at %s over %s%s", s.where(), tls, unverified)

    def _tls_session(self) -> str | None:
        """'TLSv1.3 (cipher)' when the session is encrypted, None when it is plaintext."""
        cipher = self.scalar("SHOW SESSION STATUS LIKE 'Ssl_cipher'", column=1)
        if not cipher:
            return None
        version = self.scalar("SHOW SESSION STATUS LIKE 'Ssl_version'", column=1)
        return f"{version or 'TLS'} ({cipher})"

    def _require_tls(self) -> str:
        # Asking for verification is not enough on every connector build: a server that
        # offers no TLS may still be talked to in plaintext. Check what was negotiated.
        tls = self._tls_session()
        if tls is None:
            self.close()
            raise DatabaseError(plaintext_refused(self.settings.where()))
        return tls

    @property
    def connection(self) -> Any:
        """The connector's own connection, for a caller that manages transactions."""
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except mysql.connector.Error:
                log.debug("error while closing the MySQL connection", exc_info=True)
            self._connection = None

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        try:
            cursor = self._connection.cursor()
            cursor.execute(sql, params)
            if cursor.with_rows:
                cursor.fetchall()
            cursor.close()
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, self.settings)) from None

    def scalar(self, sql: str, params: tuple[Any, ...] = (), column: int = 0) -> Any:
        try:
            cursor = self._connection.cursor()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            cursor.close()
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, self.settings)) from None
        return rows[0][column] if rows else None

    def bind_variables(self, variables: Mapping[str, Any]) -> None:
        """Set the query file's @variables with bound parameters, never by formatting SQL."""
        names = ", ".join(f"@{name} = %s" for name in variables)
        self.execute(f"SET {names}", tuple(variables.values()))

    def stream(self, sql: str, fetch_size: int = FETCH_SIZE) -> Iterator[dict[str, Any]]:
        """Rows as dicts, fetched in chunks from an unbuffered cursor: memory stays flat."""
        for description, chunk in self.raw_chunks(sql, fetch_size, raw=False):
            names = [column[0] for column in description]
            for values in chunk:
                yield dict(zip(names, values, strict=True))

    def raw_chunks(
        self, sql: str, fetch_size: int = FETCH_SIZE, raw: bool = True
    ) -> Iterator[tuple[Sequence[Any], list[tuple[Any, ...]]]]:
        """(cursor description, rows) a fetch at a time from an unbuffered cursor.

        With `raw`, values come as the server sent them (bytes, or None for NULL): the
        connector converts them in C, then walks every value of every row again in Python,
        which cost more CPU than reading the rows. RowDecoder converts what Query 2 needs.
        """
        try:
            cursor = self._connection.cursor(buffered=False, raw=raw)
            cursor.execute(sql)
            description = list(cursor.description)  # each column's name, then its type
            while chunk := cursor.fetchmany(fetch_size):
                yield description, chunk
            cursor.close()
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, self.settings)) from None

    def rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """A small result read at once, with bound parameters."""
        try:
            cursor = self._connection.cursor(dictionary=True)
            cursor.execute(sql, tuple(params))
            rows = list(cursor.fetchall())
            cursor.close()
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, self.settings)) from None
        return rows

    def explain(self, sql: str) -> list[dict[str, Any]]:
        try:
            cursor = self._connection.cursor(dictionary=True)
            cursor.execute(f"EXPLAIN {sql}")
            rows = list(cursor.fetchall())
            cursor.close()
        except mysql.connector.Error as exc:
            raise DatabaseError(describe_error(exc, self.settings)) from None
        return rows


class RowSource:
    """Query 2 over a DatabaseConnection, with the plan and window bound as parameters."""

    def __init__(self, db: DatabaseConnection, plan_type: str, lookback_days: int) -> None:
        self.db = db
        self.query = load_query(SYNC_QUERY)
        db.bind_variables({"plan_type": plan_type, "lookback_days": lookback_days})

    def count(self) -> int:
        return int(self.db.scalar(f"SELECT COUNT(*) FROM ({self.query}) AS qualifying") or 0)

    def chunks(self, fetch_size: int = FETCH_SIZE) -> Iterator[list[SourceRow | UnreadableRow]]:
        """Query 2's rows, decoded a fetch at a time (as the read-ahead hands them on)."""
        decoder: RowDecoder | None = None
        for description, chunk in self.db.raw_chunks(self.query, fetch_size):
            decoder = decoder or RowDecoder(description)
            yield list(map(decoder, chunk))

    def rows(self) -> Iterator[SourceRow | UnreadableRow]:
        for chunk in self.chunks():
            yield from chunk

    def customers(self, ids: Sequence[int]) -> dict[int, Customer]:
        """The customers with these ids that still exist, read back by bound parameters."""
        found: dict[int, Customer] = {}
        for start in range(0, len(ids), CUSTOMERS_CHUNK):
            chunk = list(ids[start : start + CUSTOMERS_CHUNK])
            placeholders = ", ".join(["%s"] * len(chunk))
            for row in self.db.rows(CUSTOMERS_BY_ID.format(placeholders=placeholders), chunk):
                customer = Customer.from_mapping(row)
                found[customer.customer_id] = customer
        return found

    def plan_types(self) -> list[str]:
        """The plan types customers have, for a message when PLAN_TYPE matches none."""
        rows = self.db.rows("SELECT DISTINCT plan_type FROM customers ORDER BY plan_type", ())
        return [str(row["plan_type"]) for row in rows if row["plan_type"] is not None]

    def first_row(self) -> dict[str, Any] | None:
        return next(self.db.stream(f"{self.query} LIMIT 1"), None)

    def newest_view(self) -> datetime | None:
        """The newest viewed_at in page_views (UTC), None when it holds none; an index's end
        (idx_page_views_viewed_at), not a scan. A stalled pipeline shows here."""
        value = self.db.scalar("SELECT MAX(viewed_at) FROM page_views")
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def explain(self) -> list[dict[str, Any]]:
        return self.db.explain(self.query)


_DATE_TIMES = frozenset({FieldType.DATETIME, FieldType.TIMESTAMP})


class RowDecoder:
    """Query 2's rows, as raw values (bytes or None), into SourceRows; built once a query
    from the cursor's description.

    What the connector would make of the values, at a third of its CPU: ids become ints;
    a DATETIME or TIMESTAMP view time a naive datetime (None for MySQL's zero dates, as
    the connector has it); every other value text, with bytes that are not UTF-8 replaced
    and noted. A view time of any other type stays text and fails the row as bad_row. A
    column left out of an edited query is NULL; without customer_id or page_view_id, every
    row is an UnreadableRow.
    """

    def __init__(self, description: Sequence[Sequence[Any]]) -> None:
        index = {str(column[0]): position for position, column in enumerate(description)}
        self._missing = next((n for n in ("customer_id", "page_view_id") if n not in index), None)
        self._customer_id = index.get("customer_id", 0)
        self._page_view_id = index.get("page_view_id", 0)
        viewed_at = index.get("viewed_at")
        self._view_time: Callable[[Sequence[Any]], Any] = (
            (lambda _values: None)
            if viewed_at is None
            else _view_time(viewed_at, description[viewed_at][1] in _DATE_TIMES)
        )
        positions = [index.get(name) for name in TEXT_COLUMNS]
        self._texts: Callable[[Sequence[Any]], Sequence[Any]] = (
            operator.itemgetter(*positions)
            if None not in positions
            else lambda values: [None if at is None else values[at] for at in positions]
        )

    def __call__(self, values: Sequence[Any]) -> SourceRow | UnreadableRow:
        try:
            return self._decode(values)
        except ROW_ASSUMPTIONS as exc:
            customer_id = None if self._missing == "customer_id" else values[self._customer_id]
            return UnreadableRow(customer_id_of(customer_id), exc)

    def _decode(self, values: Sequence[Any]) -> SourceRow:
        if self._missing is not None:
            raise KeyError(self._missing)
        raw_texts = self._texts(values)
        not_utf8: tuple[str, ...] = ()
        try:
            texts = [None if value is None else value.decode() for value in raw_texts]
        except UnicodeDecodeError:
            texts, not_utf8 = decode_texts(raw_texts)
        email, first_name, last_name, plan_type, page, device, location = texts
        return SourceRow(
            int(values[self._customer_id]),
            email,
            first_name,
            last_name,
            plan_type,
            int(values[self._page_view_id]),
            page,
            device,
            location,
            self._view_time(values),
            not_utf8,
        )


def _view_time(position: int, date_time: bool) -> Callable[[Sequence[Any]], Any]:
    """The view time's value: a datetime from a DATETIME or TIMESTAMP column, else text."""
    convert = _date_time if date_time else _decoded

    def view_time(values: Sequence[Any]) -> Any:
        value = values[position]
        return None if value is None else convert(value)

    return view_time


def _date_time(value: bytes) -> datetime | None:
    try:
        return datetime.fromisoformat(value.decode())
    except ValueError:  # a zero date such as 0000-00-00 00:00:00
        return None


def _decoded(value: bytes) -> str:
    return bytes(value).decode("utf-8", errors="replace")


def plaintext_refused(where: str) -> str:
    return (
        f"MySQL at {where} did not negotiate TLS although MYSQL_SSL_CA is set; "
        "refusing to go on in plaintext"
    )


_CERTIFICATE_FAILURE = re.compile(r"certificate verify failed: (.*?)\.? \(_ssl\.c", re.IGNORECASE)


def describe_error(exc: mysql.connector.Error, settings: ConnectionSettings) -> str:
    """One line that says what went wrong and where, for the errors people actually hit."""
    where = settings.where()
    errno = getattr(exc, "errno", None)
    detail = str(getattr(exc, "msg", "") or exc).splitlines()[0]
    certificate = _CERTIFICATE_FAILURE.search(detail)
    if certificate:
        return (
            f"MySQL at {where}: TLS certificate not accepted: {certificate.group(1)} "
            "(check MYSQL_SSL_CA, MYSQL_HOST and MYSQL_SSL_VERIFY_IDENTITY)"
        )
    if errno == errorcode.CR_SSL_CONNECTION_ERROR:
        return f"{plaintext_refused(where)} ({detail})"
    messages = {
        errorcode.CR_CONN_HOST_ERROR: f"cannot reach MySQL at {settings.host}:{settings.port}",
        errorcode.CR_CONNECTION_ERROR: (
            f"cannot reach MySQL through the Unix socket {settings.unix_socket}"
        ),
        errorcode.CR_UNKNOWN_HOST: f"unknown MySQL host {settings.host!r}",
        errorcode.ER_ACCESS_DENIED_ERROR: (
            f"MySQL refused user {settings.user!r} at {settings.endpoint()}: "
            "check MYSQL_USER and MYSQL_PASSWORD"
        ),
        errorcode.ER_DBACCESS_DENIED_ERROR: (
            f"MySQL user {settings.user!r} may not use database {settings.database!r}"
        ),
        errorcode.ER_BAD_DB_ERROR: f"MySQL database {settings.database!r} does not exist",
        errorcode.ER_NO_SUCH_TABLE: (
            f"a table Query 2 needs is missing in {where}: load sql/database_setup.sql or "
            "check MYSQL_DATABASE"
        ),
        errorcode.ER_TABLEACCESS_DENIED_ERROR: (
            f"MySQL user {settings.user!r} lacks SELECT on the tables in {where}"
        ),
        errorcode.CR_SERVER_LOST: f"lost the connection to MySQL at {where}",
        errorcode.CR_SERVER_GONE_ERROR: f"the MySQL server at {where} went away",
    }
    message = messages.get(errno) if errno is not None else None
    return f"{message} ({detail})" if message else f"MySQL error at {where}: {detail}"


# -- read-ahead ---------------------------------------------------------------------------
# The database keeps streaming while the API is slow (up to the buffer's size), and
# memory stays bounded because the reader waits when the buffer is full. Rows cross
# between the threads in chunks (a fetch each), not one by one: with a full buffer, a
# queue of single rows wakes the reader for every row the sync takes, and that hand-over
# cost more CPU than reading the row.

T = TypeVar("T")
_END = object()
BUFFER_ROWS = 20_000


class ReadAhead(Generic[T]):
    """Iterate over the items of `chunks` through a bounded queue filled by a reader thread.

    At most `size` items (in chunks of up to `chunk_size`) wait in the queue, plus the
    chunk each thread holds.
    """

    def __init__(
        self, chunks: Iterable[Sequence[T]], size: int = BUFFER_ROWS, chunk_size: int = FETCH_SIZE
    ) -> None:
        self._chunks = chunks
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, size // chunk_size))
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="read-ahead", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._put(chunk):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            self._error = exc
        self._put(_END)

    def _put(self, item: object) -> bool:
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield from item  # type: ignore[misc]

    def close(self) -> None:
        """Stop the reader (for example when the run is interrupted) and wait for it."""
        self._cancelled.set()
        self._thread.join(timeout=30)
