"""The client's own HTTP/1.1 connections against a loopback server that answers as scripted:
chunked, close-delimited and large answers, over plain TCP and over TLS, connections the
server drops while idle, answers that are not HTTP or never come, and requests routed
through a proxy."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from iterable_client import IterableClient, RetryPolicy
from tests.support.tls import TlsFiles, make_tls_files

USER = {"email": "alice@example.com", "dataFields": {"plan_type": "pro"}}
SUCCESS = b'{"msg": "", "code": "Success", "params": null}'
ONCE = RetryPolicy(max_attempts=1)


def answer(body: bytes = SUCCESS, *headers: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in headers)
    if not any(
        line.lower().startswith(("content-length", "transfer-encoding")) for line in headers
    ):
        head += f"Content-Length: {len(body)}\r\n"
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + head.encode() + b"\r\n" + body


class ScriptedServer(socketserver.ThreadingTCPServer):
    """Reads each request whole, records its request line, and sends the next scripted
    answer; after an answer marked "close" it closes the connection, and for one marked
    "stall" it sends nothing for 3 seconds. With `tls`, it speaks TLS."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: list[tuple[bytes, str]], tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.tls = tls
        self.script = list(script)
        self.request_lines: list[str] = []
        self.connections = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.server_address[1]}"
        return f"http://127.0.0.1:{self.server_address[1]}"

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, address

    def next_answer(self, request_line: str) -> tuple[bytes, str]:
        with self.lock:
            self.request_lines.append(request_line)
            return self.script.pop(0) if self.script else (answer(), "keep")


class Handler(socketserver.StreamRequestHandler):
    server: ScriptedServer

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
        while True:
            request_line = self.rfile.readline().decode().strip()
            if not request_line:
                return
            length = 0
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.rfile.read(length)
            reply, then = self.server.next_answer(request_line)
            if then == "stall":
                time.sleep(3.0)
                return
            self.wfile.write(reply)
            self.wfile.flush()
            if then == "close":
                self.connection.shutdown(socket.SHUT_RDWR)
                return


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(*script: tuple[bytes, str], tls: ssl.SSLContext | None = None) -> ScriptedServer:
        server = ScriptedServer(list(script), tls)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_chunked_answer_is_read_whole(serve):
    chunked = b"10\r\n" + SUCCESS[:16] + b"\r\n" + b"%x\r\n" % len(SUCCESS[16:]) + SUCCESS[16:]
    server = serve((answer(chunked + b"\r\n0\r\n\r\n", "Transfer-Encoding: chunked"), "keep"))
    with IterableClient("key", server.url, retry=ONCE) as client:
        first, second = client.update_user(USER), client.update_user(USER)
    assert (first.ok, first.code) == (True, "Success")
    assert second.ok and server.connections == 1  # the connection stayed usable after it


def test_an_answer_that_ends_at_the_close_is_read_whole(serve):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    server = serve((head + SUCCESS, "close"))
    with IterableClient("key", server.url, retry=ONCE) as client:
        first, second = client.update_user(USER), client.update_user(USER)
    assert (first.ok, first.code, second.ok) == (True, "Success", True)
    assert server.connections == 2  # "Connection: close" was honoured


def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed(serve):
    server = serve((answer(), "close"))  # answers, then drops the kept-alive connection
    with IterableClient("key", server.url, retry=ONCE) as client:
        first = client.update_user(USER)
        time.sleep(0.05)  # the server's close reaches us
        second = client.update_user(USER)
    assert (first.ok, second.ok, second.attempts) == (True, True, 1)
    assert len(server.request_lines) == 2 and server.connections == 2


def test_an_answer_that_is_not_http_is_a_failed_call_with_a_reason(serve):
    server = serve((b"hello there\r\n", "close"))
    with IterableClient("key", server.url, retry=ONCE) as client:
        result = client.update_user(USER)
    assert (result.ok, result.http_status) == (False, None)
    assert result.error == "connection failed: not an HTTP answer: b'hello there\\r\\n'"


def test_an_answer_cut_short_is_a_failed_call(serve):
    server = serve((answer()[:-10], "close"))
    with IterableClient("key", server.url, retry=ONCE) as client:
        result = client.update_user(USER)
    assert not result.ok and result.error and result.error.startswith("connection failed")


def test_requests_go_through_the_proxy_the_environment_names(serve, monkeypatch):
    proxy = serve()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with IterableClient("key", "http://iterable.invalid", retry=ONCE) as client:
        result = client.update_user(USER)
    assert result.ok
    assert proxy.request_lines == ["POST http://iterable.invalid/api/users/update HTTP/1.1"]


BIG = b'{"msg": "' + b"x" * 300_000 + b'", "code": "Success", "params": null}'


@pytest.fixture
def serve_tls(serve, tls_files, monkeypatch) -> Callable[..., ScriptedServer]:
    """A scripted server over TLS, with a certificate the client is made to trust."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_files.ca))
    return lambda *script: serve(*script, tls=context)


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
def test_answers_in_many_pieces_are_read_whole_on_one_connection(serve, serve_tls, secure):
    chunked = b"10\r\n" + SUCCESS[:16] + b"\r\n" + b"%x\r\n" % len(SUCCESS[16:]) + SUCCESS[16:]
    script = (
        (answer(BIG), "keep"),  # several reads, and over TLS several records
        (answer(chunked + b"\r\n0\r\n\r\n", "Transfer-Encoding: chunked"), "keep"),
    )
    server = (serve_tls if secure else serve)(*script)
    with IterableClient("key", server.url, retry=ONCE) as client:
        results = [client.update_user(USER) for _ in range(3)]
    assert [(result.ok, result.code) for result in results] == [(True, "Success")] * 3
    assert results[0].msg == "x" * 300_000
    assert server.connections == 1


@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
def test_an_answer_that_never_comes_times_out(serve, serve_tls, secure):
    server = (serve_tls if secure else serve)((answer(), "stall"))
    with IterableClient("key", server.url, timeout=0.3, retry=ONCE) as client:
        started = time.monotonic()
        result = client.update_user(USER)
        took = time.monotonic() - started
    assert (result.ok, result.error) == (False, "timed out after 0.3s")
    assert took < 2.5  # not the server's 3 seconds
