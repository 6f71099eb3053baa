"""The job's HTTP transport: a request's bytes out, its answer in, for the Iterable client
and the health-check pings alike (`Transport`, made by `open_connections`).

Single mode makes two small requests per customer. urllib3 spent over 200 µs of CPU on
each, and http.client kept per thread about 105 µs more than this (make bench
--transports own,http.client): a pool, header objects, a response object, the email
package parsing headers. Here a thread keeps its own connection, a request is one
prebuilt block of bytes and one send, and an answer is its status, its headers as a dict
and its body (by Content-Length, chunked, or up to the close). It is hardened as urllib3
and http.client are: a connection is discarded on any exception in the middle of an
exchange, 1xx answers are skipped, the answer is still read after a broken pipe (a 413
to a large body), header values with line breaks are refused, and an over-long line
raises instead of being cut. Requests through a proxy go over urllib3, which speaks
CONNECT (`ProxiedConnections`).
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import select
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

import requests
import urllib3
import urllib3.connectionpool
import urllib3.exceptions

# Limits on an answer's head, so a broken server cannot make us read forever (http.client
# has the same line limit).
MAX_LINE = 65_536
MAX_HEADERS = 200
# Idle connections a proxy's pool keeps: one per worker thread at most (settings caps
# CONCURRENCY at 256); more are opened when needed and closed after use.
PROXY_POOL_SIZE = 256
# What may not appear in a header value or the request target: a line break would start a
# header (or a request) of the caller's choosing.
_UNSAFE_HEADER = re.compile(r"[\r\n\0]")
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")


@dataclass(frozen=True)
class Reply:
    """An answer: its status, its headers (names lower-cased) and its body."""

    status: int
    headers: dict[str, str]
    content: bytes


class NoAnswer(Exception):
    """The request got no (complete) answer; `connecting` says whether no connection was
    made, and `cause` is the error that says why."""

    def __init__(self, cause: BaseException, connecting: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.connecting = connecting


class MalformedAnswer(http.client.HTTPException):
    """What came back is not HTTP/1.x."""


class LineTooLong(MalformedAnswer):
    """A line of the answer's head (or a chunk's size line) is over MAX_LINE bytes."""


class Transport(Protocol):
    """What the client and the pings send requests through."""

    def request(self, method: str, path: str, body: bytes | None) -> Reply:
        """Send and read the answer; raises NoAnswer when there is none."""
        ...

    def close(self) -> None: ...


def open_connections(
    base_url: str,
    headers: dict[str, str],
    timeout: tuple[float, float],
    direct: Callable[[str, dict[str, str], float, float, ssl.SSLContext | None], Transport]
    | None = None,
) -> Transport:
    """Kept-alive connections to base_url (connect and read `timeout`), set up as requests
    would from the environment, read once: HTTPS_PROXY/HTTP_PROXY/NO_PROXY (a proxy goes
    through urllib3, which speaks CONNECT), and REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE for a
    private CA; certificates are always verified. Raises ValueError for a header value
    with a line break. `direct` stands in for Connections (the bench compares transports).
    """
    settings = requests.Session().merge_environment_settings(base_url, {}, None, None, None)
    verify = settings["verify"]
    ca = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
    ca_option = "ca_cert_dir" if os.path.isdir(ca) else "ca_certs"
    proxy = requests.utils.select_proxy(base_url, settings["proxies"])
    https = base_url.startswith("https:")
    if proxy:
        options: dict[str, Any] = {"maxsize": PROXY_POOL_SIZE, "block": False}
        if https:
            options.update(cert_reqs="CERT_REQUIRED", **{ca_option: ca})
        manager = urllib3.ProxyManager(proxy, num_pools=1, **options)
        # Plain HTTP goes to the proxy with the absolute URL; HTTPS through a CONNECT tunnel.
        origin = "" if https else "{0.scheme}://{0.netloc}".format(urlsplit(base_url))
        pool = manager.connection_from_url(base_url)
        return ProxiedConnections(pool, origin, headers, timeout)
    tls = None
    if https:
        if ca_option == "ca_cert_dir":
            tls = ssl.create_default_context(capath=ca)
        else:
            tls = ssl.create_default_context(cafile=ca)
    return (direct or Connections)(base_url, headers, timeout[0], timeout[1], tls)


def check_headers(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        if _UNSAFE_HEADER.search(name) or _UNSAFE_HEADER.search(value):
            raise ValueError(f"the {name.strip()!r} header holds a line break or NUL")


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader: BinaryIO = sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Connections:
    """Kept-alive connections to one base URL, one per thread that calls request()."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        connect_timeout: float,
        read_timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        check_headers(headers)
        parts = urlsplit(base_url)
        https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if https else 80)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.tls = (tls or ssl.create_default_context()) if https else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None:
            host += f":{self.port}"
        # Every request's constant header lines, encoded once.
        lines = {"Host": host, **headers}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in lines.items()).encode()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()

    def request(self, method: str, path: str, body: bytes | None) -> Reply:
        """Send and read the answer; raises NoAnswer when there is none."""
        if _UNSAFE_TARGET.search(path) or _UNSAFE_TARGET.search(method):
            raise ValueError(f"not a request target: {method} {path[:60]!r}")
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._fixed
        if body is not None:
            head += b"Content-Length: %d\r\n" % len(body)
        message = head + b"\r\n" + (body or b"")
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is not None and _dropped(connection.sock):
            self._discard(connection)  # closed by the server while idle: take a new one
            connection = None
        if connection is None:
            connection = self._connect()
        try:
            return self._exchange(connection, method, message)
        except BaseException as exc:
            # Whatever broke off the exchange (a timeout, a bad answer, an exception from a
            # signal handler), the connection may hold the rest of this answer.
            self._discard(connection)
            if isinstance(exc, OSError | http.client.HTTPException):
                raise NoAnswer(exc, connecting=False) from exc
            raise

    def close(self) -> None:
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            connection.close()

    def _connect(self) -> _Connection:
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        except OSError as exc:  # refused, unreachable, timed out, name not resolved
            raise NoAnswer(exc, connecting=True) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:  # the TLS handshake failed (ssl.SSLError) or timed out
            sock.close()
            raise NoAnswer(exc, connecting=True) from exc
        sock.settimeout(self.read_timeout)
        connection = _Connection(sock)
        with self._lock:
            self._open.add(connection)
        self._local.connection = connection
        return connection

    def _discard(self, connection: _Connection) -> None:
        with self._lock:
            self._open.discard(connection)
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None
        connection.close()

    def _exchange(self, connection: _Connection, method: str, message: bytes) -> Reply:
        unsent: OSError | None = None
        try:
            connection.sock.sendall(message)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The server may have answered before it read the whole body (a 413 to a body
            # too large) and closed the connection: that answer is the one to act on.
            unsent = exc
        try:
            version, reply = read_reply(connection.reader, method)
        except (OSError, http.client.HTTPException):
            if unsent is not None:
                raise unsent from None
            raise
        closing = reply.headers.get("connection", "").lower()
        if (
            unsent is not None
            or closing == "close"
            or (version == "HTTP/1.0" and closing != "keep-alive")
        ):
            self._discard(connection)
        return reply


def read_reply(reader: BinaryIO, method: str) -> tuple[str, Reply]:
    """The answer to a `method` request, after any 1xx interim answers, and its HTTP version."""
    while True:
        status_line = _line(reader)
        if not status_line:
            raise http.client.RemoteDisconnected("connection closed without an answer")
        version, status = _status(status_line)
        headers = _headers(reader)
        if status == 101:
            raise MalformedAnswer("101 Switching Protocols to a request that asked for none")
        if status >= 200:
            return version, Reply(status, headers, _body(reader, method, status, headers))


def _dropped(sock: socket.socket) -> bool:
    """An idle kept-alive connection with something to read has been closed by the server
    (or holds stray bytes): either way it cannot carry the next request."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _line(reader: BinaryIO) -> bytes:
    line = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise LineTooLong(f"a line of the answer is over {MAX_LINE} bytes")
    return line


def _status(line: bytes) -> tuple[str, int]:
    parts = line.decode("latin-1").split(None, 2)
    if (
        len(parts) < 2
        or not parts[0].startswith("HTTP/1.")
        or len(parts[1]) != 3
        or not (parts[1].isascii() and parts[1].isdigit())
        or parts[1] < "100"
    ):
        raise MalformedAnswer(f"not an HTTP answer: {line[:40]!r}")
    return parts[0], int(parts[1])


def _headers(reader: BinaryIO) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = _line(reader)
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise MalformedAnswer(f"more than {MAX_HEADERS} header lines")


def _body(reader: BinaryIO, method: str, status: int, headers: dict[str, str]) -> bytes:
    if method == "HEAD" or status in (204, 304):
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _chunks(reader)
    length = headers.get("content-length")
    if length is None:
        return reader.read()  # the answer ends when the server closes the connection
    if not (length.isascii() and length.isdigit()):
        raise MalformedAnswer(f"bad Content-Length {length[:20]!r}")
    content = reader.read(int(length))
    if len(content) < int(length):
        raise http.client.IncompleteRead(content, int(length) - len(content))
    return content


def _chunks(reader: BinaryIO) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = _line(reader).split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_line):
            raise MalformedAnswer(f"bad chunk size {size_line[:20]!r}")
        size = int(size_line, 16)
        if size == 0:
            while _line(reader) not in (b"\r\n", b"\n", b""):
                pass  # trailer lines
            return b"".join(parts)
        chunk = reader.read(size)
        if len(chunk) < size:
            raise http.client.IncompleteRead(b"".join(parts) + chunk)
        parts.append(chunk)
        _line(reader)  # the CRLF after the chunk


class ProxiedConnections:
    """The Transport over urllib3's pool, for requests through a proxy."""

    def __init__(
        self,
        pool: urllib3.connectionpool.HTTPConnectionPool,
        origin: str,
        headers: dict[str, str],
        timeout: tuple[float, float],
    ) -> None:
        check_headers(headers)
        self._pool = pool
        self._origin = origin
        self._headers = headers
        self._timeout = urllib3.Timeout(connect=timeout[0], read=timeout[1])

    def request(self, method: str, path: str, body: bytes | None) -> Reply:
        try:
            # Retries and redirects are the caller's to decide (paced, logged, never followed).
            reply = self._pool.urlopen(
                method,
                self._origin + path,
                body=body,
                headers=self._headers,
                retries=False,
                redirect=False,
                timeout=self._timeout,
                preload_content=True,
                assert_same_host=False,
            )
        except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError too
            raise NoAnswer(exc, connecting=True) from exc
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise NoAnswer(TimeoutError(str(exc)), connecting=True) from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise NoAnswer(TimeoutError(str(exc)), connecting=False) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise NoAnswer(exc, connecting=False) from exc
        headers = {name.lower(): value for name, value in reply.headers.items()}
        return Reply(reply.status, headers, reply.data)

    def close(self) -> None:
        self._pool.close()


# Socket errors that say where the way to the server ends.
_UNREACHABLE = {
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ECONNABORTED: "connection aborted",
}


def describe_connection_error(exc: BaseException) -> str:
    """A short phrase for why a request got no answer, from the causes urllib3 wraps (its
    own text is a long repr, cut off mid-way): "connection refused", ..."""
    causes = _causes(exc)
    phrases = (_phrase(cause) for cause in causes)
    phrase = (
        next((p for p in phrases if p), None) or f"connection failed: {_first_line(causes[-1])}"
    )
    if isinstance(exc, urllib3.exceptions.ProxyError):
        return f"through the proxy: {phrase}"
    return phrase


def _phrase(cause: BaseException) -> str | None:
    if isinstance(cause, urllib3.exceptions.NameResolutionError | socket.gaierror):
        return "name resolution failed"
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = getattr(cause, "verify_message", None) or "certificate verify failed"
        return f"TLS certificate not accepted: {detail} (CERTIFICATE_VERIFY_FAILED)"
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {getattr(cause, 'reason', None) or _first_line(cause)}"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, ConnectionResetError):
        return "connection reset"
    if isinstance(cause, http.client.RemoteDisconnected):
        return "connection closed without an answer"
    if isinstance(cause, TimeoutError):
        return "timed out"
    if isinstance(cause, OSError) and cause.errno in _UNREACHABLE:
        return _UNREACHABLE[cause.errno]
    return None


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps, outermost first."""
    found: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if any(current is seen for seen in found):
            continue
        found.append(current)
        wrapped = [getattr(current, "reason", None), current.__cause__, current.__context__]
        wrapped += [arg for arg in current.args if isinstance(arg, BaseException)]
        pending += [item for item in wrapped if isinstance(item, BaseException)]
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
