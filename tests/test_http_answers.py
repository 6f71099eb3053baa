"""The transport reads an answer's status, headers and body as http.client does, on answers
hypothesis makes up: HTTP/1.0 and 1.1, 100 Continue before the answer, bodies by
Content-Length, chunked (with extensions and trailers) or up to the close, and the answers
that have no body (HEAD, 204, 304). Each answer is read from a real socket."""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from http_connections import Reply, read_reply

TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~",
    min_size=1,
    max_size=20,
)
# A field value: visible ASCII with single spaces inside, none at either end.
VALUE = st.lists(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
    max_size=4,
).map(" ".join)
FRAMING_NAMES = {"content-length", "transfer-encoding", "connection"}


@dataclass(frozen=True)
class Answer:
    method: str
    wire: bytes


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    method = draw(st.sampled_from(["GET", "POST", "HEAD"]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    status = draw(st.sampled_from([200, 201, 204, 304, 400, 404, 413, 429, 500, 503]))
    reason = draw(st.sampled_from(["", " OK", " Too Many Requests", " whatever it says"]))
    names = draw(
        st.lists(
            TOKEN.filter(lambda name: name.lower() not in FRAMING_NAMES),
            max_size=12,
            unique_by=str.lower,
        )
    )
    headers = [(name, draw(VALUE)) for name in names]
    body = draw(st.binary(max_size=3000))
    # http.client would read chunks after a 204 or 304 that names chunked framing (which a
    # 204 may not, and a 304 need not), where there are none.
    bodiless = status in (204, 304)
    framing = draw(
        st.sampled_from(["length", "close"] if bodiless else ["length", "chunked", "close"])
    )
    wire = b""
    if draw(st.booleans()):
        wire += b"HTTP/1.1 100 Continue\r\n\r\n"
    wire += f"{version} {status}{reason}\r\n".encode()
    wire += "".join(f"{name}: {value}\r\n" for name, value in headers).encode()
    has_body = method != "HEAD" and not bodiless
    if framing == "length":
        wire += b"Content-Length: %d\r\n\r\n" % len(body)
    elif framing == "chunked":
        wire += b"Transfer-Encoding: chunked\r\n\r\n"
    else:
        wire += b"\r\n"
    if not has_body:
        return Answer(method, wire)
    if framing != "chunked":
        return Answer(method, wire + body)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        if end > start:
            extension = draw(st.sampled_from(["", ";name=value", "; ext"]))
            wire += b"%x%s\r\n%s\r\n" % (end - start, extension.encode(), body[start:end])
    wire += b"0\r\n"
    if draw(st.booleans()):
        wire += b"Trailer-Field: trailing value\r\n"
    return Answer(method, wire + b"\r\n")


def served(wire: bytes) -> socket.socket:
    """The reading end of a socket pair whose other end sent `wire` and closed."""
    reading, writing = socket.socketpair()
    with writing:
        writing.sendall(wire)
    return reading


def ours(answer: Answer) -> Reply:
    with served(answer.wire) as sock, sock.makefile("rb") as reader:
        return read_reply(reader, answer.method)[1]


def standard_library(answer: Answer) -> Reply:
    with served(answer.wire) as sock:
        response = http.client.HTTPResponse(sock, method=answer.method)
        response.begin()
        content = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        response.close()
    return Reply(response.status, headers, content)


@settings(max_examples=300, deadline=None)
@given(answers())
def test_an_answer_reads_as_http_client_reads_it(answer):
    assert ours(answer) == standard_library(answer)
