"""The client's own HTTP/1.1 connections against a loopback server that answers as scripted:
chunked, close-delimited and large answers, over plain TCP and over TLS, connections the
server drops while idle, answers that are not HTTP or never come, and requests routed
through a proxy."""

from __future__ import annotations

import signal
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from bulk import is_too_large
from http_connections import Connections
from iterable_client import USERS_BULK_UPDATE, IterableClient, RetryPolicy
from monitoring import ping
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
    answer; after an answer marked "close" it closes the connection, for one marked "stall"
    it sends nothing for 3 seconds, for one marked "hold" it sends the answer and then
    nothing for 3 seconds, and one marked "early" goes out before the request's body is
    read, which the server then never reads. With `tls`, it speaks TLS."""

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
            reply, then = self.server.next_answer(request_line)
            if then == "early":  # answers before the body, then closes with it unread
                self.wfile.write(reply)
                self.wfile.flush()
                time.sleep(0.2)
                return
            self.rfile.read(length)
            if then == "stall":
                time.sleep(3.0)
                return
            self.wfile.write(reply)
            self.wfile.flush()
            if then == "hold":
                time.sleep(3.0)
                return
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


def test_pings_go_through_the_same_proxy(serve, monkeypatch):
    proxy = serve()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    ping("http://ping.invalid/abc-123", "start")
    assert proxy.request_lines == ["GET http://ping.invalid/abc-123/start HTTP/1.1"]


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


# -- hardened as http.client and urllib3 are ------------------------------------------------


class Interrupted(Exception):
    """Raised by a signal handler in the middle of an exchange."""


def interrupt_main_thread_after(seconds: float) -> threading.Timer:
    """SIGUSR1 to this (the main) thread after `seconds`; its handler raises Interrupted."""
    timer = threading.Timer(
        seconds, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1)
    )
    timer.start()
    return timer


def test_a_connection_interrupted_in_the_middle_of_an_answer_is_not_used_again(serve):
    server = serve((answer()[:-10], "hold"))  # the answer's last 10 bytes never come
    connections = Connections(server.url, {}, 1.0, 5.0)

    def handler(_signum: int, _frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        timer = interrupt_main_thread_after(0.3)
        with pytest.raises(Interrupted):
            connections.request("POST", "/api/users/update", b"{}")
        timer.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    try:
        reply = connections.request("POST", "/api/users/update", b"{}")
    finally:
        connections.close()
    assert (reply.status, reply.content) == (200, SUCCESS)
    assert server.connections == 2  # not the first connection, with half an answer in it


def test_a_status_in_other_digits_fails_the_call_and_its_connection_is_replaced(serve):
    server = serve((b"HTTP/1.1 \xb2\xb2\xb2 OK\r\nContent-Length: 0\r\n\r\n", "keep"))
    with IterableClient("key", server.url, retry=ONCE) as client:
        first, second = client.update_user(USER), client.update_user(USER)
    assert (first.ok, first.http_status) == (False, None)
    assert first.error and first.error.startswith("connection failed: not an HTTP answer")
    assert second.ok and server.connections == 2


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    ],
    ids=["100", "103"],
)
def test_interim_answers_are_skipped(serve, interim):
    second = b'{"msg": "second", "code": "Success", "params": null}'
    server = serve((interim + answer(), "keep"), (answer(second), "keep"))
    with IterableClient("key", server.url, retry=ONCE) as client:
        results = [client.update_user(USER), client.update_user(USER)]
    assert [(r.ok, r.http_status, r.msg) for r in results] == [
        (True, 200, ""),
        (True, 200, "second"),
    ]


def test_an_answer_sent_before_a_large_body_was_read_is_still_read(serve):
    """The server refuses the body from its headers and closes the connection with the
    body unread: sending fails (broken pipe or reset), and the 413 is there to read."""
    text = b"Request body too large"
    refusal = (
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(text), text)
    )
    server = serve((refusal, "early"), (answer(), "keep"))
    with IterableClient("key", server.url, retry=ONCE) as client:
        refused = client.call(USERS_BULK_UPDATE, None, body=b"x" * 32_000_000)
        after = client.update_user(USER)
    assert (refused.http_status, refused.msg) == (413, "Request body too large")
    assert is_too_large(refused)  # what makes bulk mode send the batch again in halves
    assert after.ok and server.connections == 2


@pytest.mark.parametrize(
    "key", ["key\r\nX-Injected: yes", "key\nX-Injected: yes", "key\rX-Injected: yes", "key\0"]
)
def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent(serve, key):
    server = serve()
    with (
        pytest.raises(ValueError, match="Api-Key"),
        IterableClient(key, server.url, retry=ONCE) as client,
    ):
        client.update_user(USER)
    assert server.request_lines == []


def test_a_request_target_with_a_line_break_is_refused_before_anything_is_sent(serve):
    server = serve()
    connections = Connections(server.url, {}, 1.0, 5.0)
    try:
        with pytest.raises(ValueError, match="not a request target"):
            connections.request("GET", "/api/lists\r\nX-Injected: yes", None)
    finally:
        connections.close()
    assert server.request_lines == [] and server.connections == 0


LONG = b"a" * 70_000


@pytest.mark.parametrize(
    "reply",
    [
        answer(SUCCESS, "X-Long: " + LONG.decode()),
        b"HTTP/1.1 200 " + LONG + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(SUCCESS), SUCCESS),
        answer(
            b"%x;ext=%s\r\n%s\r\n0\r\n\r\n" % (len(SUCCESS), LONG, SUCCESS),
            "Transfer-Encoding: chunked",
        ),
    ],
    ids=["header", "status", "chunk-size"],
)
def test_an_over_long_line_fails_the_call_instead_of_being_cut(serve, reply):
    server = serve((reply, "keep"))
    with IterableClient("key", server.url, retry=ONCE) as client:
        result = client.update_user(USER)
    assert (result.ok, result.http_status) == (False, None)
    assert result.error == "connection failed: a line of the answer is over 65536 bytes"


def test_a_trusted_certificate_for_another_host_name_is_refused(serve, tmp_path, monkeypatch):
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("iterable.example").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(Path(tmp_path / "ca.pem")))
    server = serve(tls=context)  # reached as localhost, a name the certificate lacks
    with IterableClient("key", server.url, retry=ONCE) as client:
        result = client.update_user(USER)
    assert (result.ok, result.http_status) == (False, None)
    assert result.error == (
        "TLS certificate not accepted: Hostname mismatch, certificate is not valid for "
        "'localhost'. (CERTIFICATE_VERIFY_FAILED)"
    )
    assert server.request_lines == []
