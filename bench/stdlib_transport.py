"""The standard library's http.client as the job's transport, for comparing it with the
client's own (`python -m bench.run --transports own,http.client`).

`python bench/stdlib_transport.py -- SCRIPT ARGS...` runs SCRIPT (main.py) with direct
requests sent over one http.client.HTTPConnection per worker thread: the same Transport
contract as http_connections.Connections (request → Reply, NoAnswer when there is none),
the same check for a connection the server dropped while idle, and the connection
discarded on any error in the middle of an exchange.
"""

from __future__ import annotations

import functools
import http.client
import runpy
import socket
import ssl
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import http_connections  # noqa: E402
from http_connections import NoAnswer, Reply  # noqa: E402


class StdlibConnections:
    """http_connections.Connections' contract over http.client, one connection a thread."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        connect_timeout: float,
        read_timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.headers = headers
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.tls = (tls or ssl.create_default_context()) if self.https else None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()

    def request(self, method: str, path: str, body: bytes | None) -> Reply:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None and (
            connection.sock is None or http_connections._dropped(connection.sock)
        ):
            self._discard(connection)
            connection = None
        if connection is None:
            connection = self._connect()
        try:
            connection.request(method, path, body, self.headers)
            response = connection.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._discard(connection)
            raise NoAnswer(exc, connecting=False) from exc
        if response.will_close:
            self._discard(connection)
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, headers, content)

    def close(self) -> None:
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            connection.close()

    def _connect(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self.tls is not None:
            connection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.connect_timeout, context=self.tls
            )
        else:
            connection = http.client.HTTPConnection(
                self.host, self.port, timeout=self.connect_timeout
            )
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise NoAnswer(exc, connecting=True) from exc
        assert connection.sock is not None
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.sock.settimeout(self.read_timeout)
        with self._lock:
            self._open.add(connection)
        self._local.connection = connection
        return connection

    def _discard(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._open.discard(connection)
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None
        connection.close()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--":
        sys.stderr.write("usage: python bench/stdlib_transport.py -- SCRIPT [ARGS...]\n")
        return 2
    script, args = argv[1], argv[2:]
    import iterable_client

    iterable_client.open_connections = functools.partial(
        http_connections.open_connections, direct=StdlibConnections
    )
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
