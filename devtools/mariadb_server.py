"""Throwaway MariaDB server for tests, the demo and benchmarks.

Usage by hand: ``python -m devtools.mariadb_server --print-env`` starts a server,
prints ``MYSQL_HOST=...``/``MYSQL_PORT=...`` lines and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import mysql.connector

SERVER_BINARIES = ("mariadbd", "mysqld")
INSTALL_DB_BINARIES = ("mariadb-install-db", "mysql_install_db")
CLIENT_BINARIES = ("mariadb", "mysql")
# Debian/Ubuntu put the server in /usr/sbin, which is often not on a non-root PATH.
EXTRA_BINARY_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")
DEFAULT_APP_TABLES = ("customers", "page_views")
STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 3
SOCKET_NAME = "mysqld.sock"  # in the server's temp dir
INSTALL_HINT = "run devtools/ensure_mariadb.sh (or install mariadb-server and mariadb-client)"

_IDENTIFIER = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_PRIVILEGES = re.compile(r"^[A-Za-z_ ]+(?:,[A-Za-z_ ]+)*$")
_PORT_IN_USE = re.compile(r"address already in use|do you already have another server", re.I)
_PR_SET_PDEATHSIG = 1


class MariaDBNotFoundError(RuntimeError):
    """MariaDB server or client binaries are not installed."""


class MariaDBStartError(RuntimeError):
    """The throwaway server did not come up."""


def find_binary(names: Sequence[str]) -> str | None:
    """Return the first of ``names`` found on PATH or in the usual sbin/bin dirs."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    for directory in EXTRA_BINARY_DIRS:
        for name in names:
            candidate = Path(directory, name)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def require_binary(names: Sequence[str]) -> str:
    """Return the first of ``names`` found, or raise MariaDBNotFoundError with a hint."""
    found = find_binary(names)
    if found is None:
        raise MariaDBNotFoundError(f"none of {', '.join(names)} found: {INSTALL_HINT}")
    return found


def server_binaries_available() -> bool:
    """Tell whether a throwaway server can be started on this machine."""
    groups = (SERVER_BINARIES, INSTALL_DB_BINARIES, CLIENT_BINARIES)
    return all(find_binary(names) for names in groups)


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a currently free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def quote_identifier(name: str) -> str:
    """Backtick-quote a database/table/user name after checking it is a plain identifier."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f"`{name}`"


@dataclass(frozen=True)
class Database:
    """Connection details for one database on a server."""

    host: str
    port: int
    user: str
    password: str
    name: str

    def connect_args(self) -> dict[str, Any]:
        """Keyword arguments for ``mysql.connector.connect``."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.name,
            "charset": "utf8mb4",
        }

    def connect(self, **overrides: Any) -> Any:
        """Open a mysql-connector connection to this database."""
        return mysql.connector.connect(**{**self.connect_args(), **overrides})


@dataclass(frozen=True)
class ServerHandle:
    """Admin access to a running MySQL/MariaDB server (throwaway or external)."""

    host: str
    port: int
    user: str
    password: str
    unix_socket: str | None = None  # the server's socket, when known

    def connect(self, database: str | None = None, **overrides: Any) -> Any:
        """Open an autocommit mysql-connector connection as the admin user."""
        args: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "charset": "utf8mb4",
            "autocommit": True,
        }
        if database is not None:
            args["database"] = database
        return mysql.connector.connect(**{**args, **overrides})

    def execute(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        database: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows (empty for statements without rows)."""
        conn = self.connect(database)
        try:
            cursor = conn.cursor()
            cursor.execute(sql, params)
            rows = cursor.fetchall() if cursor.with_rows else []
            cursor.close()
            return [tuple(row) for row in rows]
        finally:
            conn.close()

    def database(self, name: str) -> Database:
        """Connection details for database ``name`` as the admin user."""
        return Database(self.host, self.port, self.user, self.password, name)

    def create_database(self, name: str) -> Database:
        """Create an empty utf8mb4 database and return its connection details."""
        self.execute(
            f"CREATE DATABASE {quote_identifier(name)} "
            "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )
        return self.database(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists."""
        self.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)}")

    def load_sql_file(self, path: str | Path, database: str) -> str:
        """Run a .sql file with the command-line client, proving it works outside Python."""
        return run_sql_file(
            path,
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
        )

    def run_client(self, statements: str, cwd: str | Path | None = None) -> str:
        """Type statements into the command-line client as a person would (SOURCE works)."""
        return run_client(
            statements.encode("utf-8"),
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            cwd=cwd,
        )

    def create_user(
        self,
        name: str,
        password: str,
        database: str,
        privileges: str = "SELECT",
        tables: Sequence[str] = DEFAULT_APP_TABLES,
        user_host: str = "%",
    ) -> Database:
        """Create (or reset) a least-privilege user; empty ``tables`` grants the whole db."""
        if not _PRIVILEGES.match(privileges):
            raise ValueError(f"unexpected privilege list: {privileges!r}")
        account = _account(name, user_host)
        # CREATE ... IF NOT EXISTS keeps an old password, so set it explicitly afterwards.
        self.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY %s", (password,))
        self.execute(f"ALTER USER {account} IDENTIFIED BY %s", (password,))
        db = quote_identifier(database)
        targets = [f"{db}.{quote_identifier(t)}" for t in tables] or [f"{db}.*"]
        for target in targets:
            self.execute(f"GRANT {privileges} ON {target} TO {account}")
        return Database(self.host, self.port, name, password, database)

    def drop_user(self, name: str, user_host: str = "%") -> None:
        """Drop a user created by ``create_user`` if it exists."""
        self.execute(f"DROP USER IF EXISTS {_account(name, user_host)}")


def _account(name: str, user_host: str) -> str:
    """Quoted 'user'@'host' account name, after validating both parts."""
    if not _IDENTIFIER.match(name) or not re.match(r"^[A-Za-z0-9_.%:-]+$", user_host):
        raise ValueError(f"unexpected account {name!r}@{user_host!r}")
    return f"'{name}'@'{user_host}'"


def run_sql_file(
    path: str | Path, *, host: str, port: int, user: str, password: str, database: str
) -> str:
    """Pipe a .sql file into the ``mariadb``/``mysql`` client over TCP and return its output."""
    try:
        return run_client(
            Path(path).read_bytes(),
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
        )
    except RuntimeError as exc:
        raise RuntimeError(f"{Path(path).name} failed in {exc}") from None


def run_client(
    statements: bytes,
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    database: str | None = None,
    cwd: str | Path | None = None,
) -> str:
    """Feed statements to the ``mariadb``/``mysql`` client over TCP and return its output."""
    client = require_binary(CLIENT_BINARIES)
    command = [
        client,
        "--no-defaults",
        "--protocol=TCP",
        f"--host={host}",
        f"--port={port}",
        f"--user={user}",
        "--default-character-set=utf8mb4",
        "--batch",
        *([database] if database else []),
    ]
    env = {k: v for k, v in os.environ.items() if k != "MYSQL_PWD"}
    if password:
        # Environment instead of argv so the password does not show up in `ps`.
        env["MYSQL_PWD"] = password
    result = subprocess.run(
        command,
        input=statements,
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"{Path(client).name}: {stderr}")
    return result.stdout.decode("utf-8", "replace")


def _libc_prctl() -> Any:
    """Load prctl from libc in the parent (loading libraries after fork is unsafe)."""
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    return ctypes.CDLL(libc_name).prctl if libc_name else None


class ThrowawayMariaDB:
    """A private MariaDB server in a temp dir on a free 127.0.0.1 port; a context manager."""

    host = "127.0.0.1"
    root_user = "root"
    root_password = ""

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        startup_timeout: float = STARTUP_TIMEOUT_S,
        port: int = 0,
    ) -> None:
        """Configure the server (on `port`, or a free one when 0); nothing runs until
        ``start()``."""
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.wanted_port = port
        self.port = 0
        self.tmpdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def admin(self) -> ServerHandle:
        """Root access to this server."""
        socket = str(self.tmpdir / SOCKET_NAME) if self.tmpdir is not None else None
        return ServerHandle(self.host, self.port, self.root_user, self.root_password, socket)

    @property
    def error_log(self) -> Path:
        """Path of the server error log."""
        if self.tmpdir is None:
            raise RuntimeError("server not started")
        return self.tmpdir / "error.log"

    def is_running(self) -> bool:
        """Tell whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Initialise a fresh datadir, start the server and wait until it accepts connections."""
        if self._process is not None:
            raise RuntimeError("server already started")
        server = require_binary(SERVER_BINARIES)
        install_db = require_binary(INSTALL_DB_BINARIES)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="throwaway-mariadb-"))
        atexit.register(self.stop)
        try:
            self._install_db(install_db)
            self._start_server(server)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Shut the server down (SIGTERM, then SIGKILL) and delete its temp dir."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def error_log_tail(self, lines: int = 30) -> str:
        """Last lines of the server error log, for failure messages."""
        try:
            text = self.error_log.read_text(encoding="utf-8", errors="replace")
        except (OSError, RuntimeError):
            return "(no error log)"
        return "\n".join(text.splitlines()[-lines:])

    # Convenience wrappers so callers need not go through ``admin``.
    def execute(self, sql: str, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement as root and return its rows."""
        return self.admin.execute(sql, database=database)

    def create_database(self, name: str) -> Database:
        """Create an empty utf8mb4 database."""
        return self.admin.create_database(name)

    def load_sql_file(self, path: str | Path, database: str) -> str:
        """Run a .sql file through the command-line client over TCP."""
        return self.admin.load_sql_file(path, database)

    def create_user(
        self,
        name: str,
        password: str,
        database: str,
        privileges: str = "SELECT",
        tables: Sequence[str] = DEFAULT_APP_TABLES,
    ) -> Database:
        """Create a least-privilege user for ``database``."""
        return self.admin.create_user(name, password, database, privileges, tables)

    def _datadir(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "data"

    def _run_as_root_args(self) -> list[str]:
        # mariadbd refuses to run as root unless told so explicitly.
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install_db(self, install_db: str) -> None:
        """Create the system tables in a fresh datadir."""
        command = [
            install_db,
            "--no-defaults",
            f"--datadir={self._datadir()}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *self._run_as_root_args(),
        ]
        result = subprocess.run(command, capture_output=True, timeout=120, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode("utf-8", "replace")
            raise MariaDBStartError(f"{Path(install_db).name} failed:\n{output[-4000:]}")

    def _server_command(self, server: str) -> list[str]:
        assert self.tmpdir is not None
        return [
            server,
            "--no-defaults",  # must come first; ignore /etc/mysql so the setup is reproducible
            f"--datadir={self._datadir()}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            "--skip-networking=0",
            f"--socket={self.tmpdir / SOCKET_NAME}",
            f"--pid-file={self.tmpdir / 'mysqld.pid'}",
            # Temporary tables of big sorts go here, not to a /tmp shared with other servers.
            f"--tmpdir={self.tmpdir}",
            f"--log-error={self.error_log}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            # Durability is pointless for a throwaway server; these make DDL and loads fast.
            "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
            "--performance-schema=OFF",
            *self._run_as_root_args(),
            *self.extra_args,
        ]

    def _start_server(self, server: str) -> None:
        """Start the server, retrying on another port if the chosen one was taken meanwhile."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = self.wanted_port or free_port(self.host)
            self._spawn(server)
            try:
                self._wait_until_ready()
                return
            except MariaDBStartError:
                port_taken = _PORT_IN_USE.search(self.error_log_tail(50)) is not None
                self._kill_process()
                # A port asked for is not swapped for another.
                if not port_taken or attempt == PORT_ATTEMPTS or self.wanted_port:
                    raise

    def _spawn(self, server: str) -> None:
        assert self.tmpdir is not None
        prctl = _libc_prctl()

        def die_with_parent() -> None:
            # If the test run is killed hard, take the server down too instead of leaking it.
            # Linux ties this to the thread that started the server; start it from a long-lived one.
            if prctl is not None:
                prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

        with open(self.tmpdir / "console.log", "ab") as console:
            self._process = subprocess.Popen(
                self._server_command(server),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                start_new_session=True,  # Ctrl-C in the terminal goes to us, not the server
                preexec_fn=die_with_parent,
            )

    def _kill_process(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _wait_until_ready(self) -> None:
        """Poll until the server answers ``SELECT 1`` or the timeout expires."""
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no attempt made"
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise MariaDBStartError(self._failure("server process exited during startup"))
            try:
                self.admin.execute("SELECT 1", params=None)
                return
            except (mysql.connector.Error, OSError) as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise MariaDBStartError(
            self._failure(f"no connection after {self.startup_timeout:.0f}s: {last_error}")
        )

    def _failure(self, reason: str) -> str:
        return f"MariaDB on {self.host}:{self.port}: {reason}\n--- error log tail ---\n" + (
            self.error_log_tail()
        )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.mariadb_server",
        description="Run a throwaway MariaDB server until SIGTERM/SIGINT.",
    )
    parser.add_argument(
        "--print-env", action="store_true", help="print MYSQL_HOST=... lines for scripts"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="the TCP port to listen on (default: a free one)"
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra server option, e.g. --server-arg=--skip-ssl (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start a server, print how to reach it, and stay up until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    stop_requested = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop_requested.set())
    with ThrowawayMariaDB(extra_args=args.server_arg, port=args.port) as server:
        if args.print_env:
            print(f"MYSQL_HOST={server.host}")
            print(f"MYSQL_PORT={server.port}")
            print(f"MYSQL_USER={server.root_user}")
            print(f"MYSQL_PASSWORD={server.root_password}")
        else:
            print(
                f"MariaDB on {server.host}:{server.port} (user root, no password): "
                f"mysql -h {server.host} -P {server.port} -u root"
            )
        sys.stdout.flush()
        while not stop_requested.wait(1.0):
            if not server.is_running():
                print("server exited:\n" + server.error_log_tail(), file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
