"""Hostile input against each server kind over real sockets: framing, limits, timeouts, caps.

The differential part replays the corpus of `tests.h1_corpus` (hand-written
smuggling shapes and generated families) and hypothesis mutations against a
running `HTTPServer` and a running `WSGIServer`, one connection per case,
and holds each server's answers against h11's reading of the same bytes:

1. the server never answers 2xx to a request that h11 refuses or has not
   finished reading, and where both accept, the server saw what h11 saw
   (method, path, body length: the handler and the app echo them);
2. it never answers more often than there are requests h11 frames (one
   refusal at most, the last answer, after which the connection closes);
3. a refusal's reason is one the parser documents as deliberate (or the
   server's own: chunked bodies are refused by `HTTPServer`);
4. nothing is logged at ERROR or above and no traceback is printed.

The rest pins each defect the fuzzing pass found, on both kinds where both
are concerned. Real-time tests are marked and generous; the timeout logic
itself is driven with a clock passed in (``_reap(now)``).
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
import tracemalloc
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

import attrs
import pytest
from hypothesis import given, settings

from lifecycle import CancelSource
from lifecycle._serving.h1 import Limits
from lifecycle._serving.http import FIRST_REQUEST_GRACE, HTTPServer
from lifecycle._serving.wsgi import WSGIServer
from tests.h1_corpus import CORPUS, mutated_requests
from tests.serving import WAIT, wait_until
from tests.test_h1_differential import DELIBERATE, Accepted, h11_one, stream

KINDS = ["http", "wsgi"]
CHUNKED_REFUSED = "chunked request bodies are not supported (send Content-Length)"


# -- the servers under test ------------------------------------------------------------------


class EchoHandler(BaseHTTPRequestHandler):
    """Answers every method with ``METHOD PATH BODY-LENGTH``, reading a Content-Length body."""

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self._reply(b"%s %s %d" % (self.command.encode(), self.path.encode(), len(body)))

    def _reply(self, text: bytes, *, head: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if not head:
            self.wfile.write(text)

    def do_HEAD(self) -> None:
        self._reply(b"HEAD", head=True)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._echo
        raise AttributeError(name)

    def log_message(self, format: str, *args: object) -> None:
        pass


def echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``METHOD PATH_INFO[?QUERY] BODY-LENGTH``, reading the whole body."""
    body = environ["wsgi.input"].read()
    path = environ["PATH_INFO"] + ("?" + environ["QUERY_STRING"] if environ["QUERY_STRING"] else "")
    text = f"{environ['REQUEST_METHOD']} {path} {len(body)}".encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(text)))])
    return [text]


def make_server(kind: str, **options: Any) -> HTTPServer:
    if kind == "http":
        return HTTPServer(EchoHandler, **options)
    return WSGIServer(echo_app, **options)


@contextmanager
def running(srv: HTTPServer) -> Iterator[HTTPServer]:
    srv.start(CancelSource().token)
    try:
        yield srv
    finally:
        srv.stop(CancelSource(timeout=WAIT).token)
        assert srv.wait_stopped(WAIT)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(kind: str) -> Iterator[HTTPServer]:
    with running(make_server(kind)) as srv:
        yield srv


# -- talking to them -------------------------------------------------------------------------


def exchange(address: tuple[str, int], data: bytes, *, half_close: bool = True) -> bytes:
    """Send ``data`` on a new connection, end our side; all the server sent until it closed."""
    with socket.create_connection(address, timeout=WAIT) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server refused early and closed while we were still sending
            pass
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@attrs.frozen
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def responses(data: bytes, methods: list[bytes]) -> list[Response]:
    """The final responses in ``data`` (1xx skipped); ``methods[i]``: the i-th request's method."""
    found: list[Response] = []
    while data:
        end = data.find(b"\r\n\r\n")
        assert end >= 0, f"a response head that does not end: {data[:200]!r}"
        lines = data[:end].decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/1\.[01] (\d{3}) ?(.*)", lines[0])
        assert match is not None, f"not a status line: {lines[0]!r}"
        status = int(match.group(1))
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        data = data[end + 4 :]
        if status < 200:
            continue
        method = methods[len(found)] if len(found) < len(methods) else b"GET"
        if (method == b"HEAD" and status < 400) or status in (204, 304):
            length = 0
        elif "content-length" in headers:
            length = int(headers["content-length"])
        else:
            assert headers.get("transfer-encoding") != "chunked", "the test apps send lengths"
            length = len(data)
        found.append(Response(status, match.group(2), headers, data[:length]))
        data = data[length:]
    return found


def expected_echo(kind: str, request: Accepted) -> bytes:
    """What the echo handler or app answers to ``request`` as h11 read it."""
    target = request.target
    if kind == "http":  # http.server hands the target over as sent (//x made /x)
        path = target.decode("latin-1")
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
    else:  # WSGI: the path of the target, percent-decoded as latin-1, and the query
        if target.startswith(b"/"):
            raw_path, _, query = target.partition(b"?")
        elif target == b"*":
            raw_path, query = b"*", b""
        else:
            split = urllib.parse.urlsplit(target)
            raw_path, query = split.path or b"/", split.query
        path = urllib.parse.unquote(raw_path.decode("latin-1"), "latin-1")
        if query:
            path += "?" + query.decode("latin-1")
    return f"{request.method.decode()} {path} {len(request.body)}".encode("latin-1")


def h11_requests(data: bytes) -> tuple[list[Accepted], bool]:
    """The requests h11 frames in ``data`` that a server answers (up to the first that
    closes the connection), and whether h11 stopped at one it refused or did not finish."""
    accepted: list[Accepted] = []
    stopped = False
    for outcome in stream(h11_one, data):
        if not isinstance(outcome, Accepted):
            stopped = True
            break
        accepted.append(outcome)
        if outcome.keep_alive is False and not http10_keep_alive(outcome):
            break
    return accepted, stopped


def http10_keep_alive(request: Accepted) -> bool:
    """An HTTP/1.0 request asking to keep the connection: h11 never does, the servers do."""
    tokens = [
        token.strip().lower()
        for name, value in request.headers
        if name == b"connection"
        for token in value.split(b",")
    ]
    return request.version == b"1.0" and b"keep-alive" in tokens and b"close" not in tokens


def check_against_h11(kind: str, address: tuple[str, int], data: bytes) -> list[str]:
    """Where the server's answers to ``data`` break the properties of this module."""
    accepted, _ = h11_requests(data)
    raw = exchange(address, data)
    try:
        answers = responses(raw, [r.method for r in accepted])
    except AssertionError as exc:
        return [f"unparsable answer ({exc}): {raw[:300]!r}"]
    problems = []
    if len(answers) > len(accepted) + 1:
        problems.append(f"{len(answers)} answers to {len(accepted)} requests h11 frames")
    for index, answer in enumerate(answers):
        if answer.status >= 400:
            if index != len(answers) - 1:
                problems.append(f"answer #{index} is a {answer.status} but more answers follow")
            allowed = DELIBERATE | {CHUNKED_REFUSED} if index < len(accepted) else None
            if allowed is not None and answer.reason not in allowed:
                problems.append(f"h11 accepted #{index}; refused for {answer.reason!r}")
            if answer.headers.get("connection") != "close":
                problems.append(f"refusal #{index} without Connection: close")
            continue
        if index >= len(accepted):
            problems.append(f"answer #{index} ({answer.status}) to what h11 did not accept")
        elif accepted[index].method != b"HEAD" and answer.body != expected_echo(
            kind, accepted[index]
        ):
            problems.append(
                f"#{index} seen as {answer.body!r}, h11: {expected_echo(kind, accepted[index])!r}"
            )
    return problems


def assert_quiet(log_events: list[Any], captured: Any) -> None:
    """Nothing at ERROR or above, no stack, no traceback on stderr."""
    loud = [
        e
        for e in log_events
        if e.get("log_level") in ("error", "critical", "exception") or e.get("exc_info")
    ]
    assert loud == []
    out, err = captured.readouterr()
    assert "Traceback" not in out + err


def server_threads(srv: HTTPServer) -> list[threading.Thread]:
    """The server's connection threads (named after their peer)."""
    prefix = f"lifecycle:{srv.name} 127.0.0.1:"
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


# -- the differential test -------------------------------------------------------------------


def test_the_corpus_against_each_server(kind, log_events, capfd):
    """Over every corpus case, the server never accepts what h11 refuses, never answers
    twice to one framing, refuses only for documented reasons, and stays quiet."""
    with running(make_server(kind)) as srv:
        problems = {
            case.name: found
            for case in CORPUS
            if (found := check_against_h11(kind, srv.address, case.data))
        }
        wait_until(lambda: not server_threads(srv), "every connection thread ended")
        conn = http.client.HTTPConnection(*srv.address, timeout=WAIT)
        conn.request("GET", "/after")
        assert conn.getresponse().read() == b"GET /after 0"  # still serving
        conn.close()
    assert problems == {}
    assert_quiet(log_events, capfd)


def test_mutated_requests_against_each_server(kind, log_events, capfd):
    """Hypothesis mutations of valid requests keep the same properties on each server."""
    with running(make_server(kind)) as srv:

        @settings(max_examples=120, deadline=None, database=None)
        @given(mutated_requests())
        def check(data: bytes) -> None:
            assert check_against_h11(kind, srv.address, data) == []

        check()
    assert_quiet(log_events, capfd)


# -- request smuggling shapes and malformed framing ------------------------------------------

NEXT = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"


def post(*fields: bytes, body: bytes = b"") -> bytes:
    return (
        b"POST /u HTTP/1.1\r\nHost: x\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body
    )


SMUGGLING = {
    "two different Content-Length": post(
        b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"
    ),
    "Content-Length and Transfer-Encoding": post(
        b"Content-Length: 4", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + NEXT
    ),
    "Transfer-Encoding gzip": post(b"Transfer-Encoding: gzip", body=b"hello" + NEXT),
    "xchunked": post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n" + NEXT),
    "chunked, identity": post(b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n" + NEXT),
    "two TE lines": post(
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip", body=b"0\r\n\r\n" + NEXT
    ),
    "Content-Length superscript two": post("Content-Length: \u00b2".encode(), body=b"he" + NEXT),
    "Content-Length 2**64": post(b"Content-Length: 18446744073709551616", body=NEXT),
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n" + NEXT,
    "bare CR in a value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n" + NEXT,
    "HTTP/1.10": b"GET / HTTP/1.10\r\nHost: x\r\n\r\n" + NEXT,
    "HTTP/0.9 GET /": b"GET /\r\n\r\n" + NEXT,
    "HTTP/2.0": b"GET / HTTP/2.0\r\nHost: x\r\n\r\n" + NEXT,
    "malformed version": b"GET / HTTP/1.x\r\nHost: x\r\n\r\n" + NEXT,
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n" + NEXT,
    "space before the colon": b"GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n" + NEXT,
}
STATUS = {
    "Transfer-Encoding gzip": 501,
    "xchunked": 501,
    "chunked, identity": 400,
    "two TE lines": 400,
    "Content-Length 2**64": 413,
    "HTTP/1.10": 505,
    "HTTP/2.0": 505,
}


@pytest.mark.parametrize("shape", SMUGGLING, ids=str)
def test_a_smuggling_shape_gets_one_refusal_with_a_status_line_then_the_close(
    server, shape, log_events
):
    """Each shape the fuzzing pass found is one 4xx/5xx with an HTTP/1.1 status line, then
    the connection closes: the bytes after it are never served as a request."""
    raw = exchange(server.address, SMUGGLING[shape], half_close=False)
    assert raw.startswith(b"HTTP/1.1 %d " % STATUS.get(shape, 400))
    assert len(responses(raw, [])) == 1
    refused = [e for e in log_events if e["event"] == "request refused"]
    assert len(refused) == 1
    assert refused[0]["status"] == STATUS.get(shape, 400)
    assert refused[0]["log_level"] in ("info", "debug")
    assert "exc_info" not in refused[0]


@pytest.mark.parametrize(
    "size", [b"0x5", b"1_0", b"+5", b" 5", b"5 ", b"g"], ids=lambda s: s.decode()
)
def test_a_bad_chunk_size_is_a_400_and_a_close_without_a_stack(size, log_events, capfd):
    """A malformed chunk size read through wsgi.input answers 400 and closes; the app's
    failure to read is the client's fault and logs no stack."""
    with running(WSGIServer(echo_app)) as srv:
        data = post(b"Transfer-Encoding: chunked", body=size + b"\r\nhello\r\n0\r\n\r\n" + NEXT)
        raw = exchange(srv.address, data, half_close=False)
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert len(responses(raw, [])) == 1
    assert_quiet(log_events, capfd)
    assert [e["status"] for e in log_events if e["event"] == "request refused"] == [400]


def test_a_body_that_ends_early_is_a_400_for_the_app(log_events, capfd):
    """A client that closes in the middle of its declared body: the app's read fails,
    the server answers 400 (if it still can) and logs no stack."""
    with running(WSGIServer(echo_app)) as srv:
        raw = exchange(srv.address, post(b"Content-Length: 100", body=b"short"))
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert_quiet(log_events, capfd)


# -- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 2000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 20 + b"\r\n", 431),
        (post(b"Content-Length: 101", body=b"a" * 101), 413),
    ],
    ids=["request line", "head size", "header count", "body size"],
)
def test_each_limit_is_a_knob_and_refuses_past_it(kind, request_bytes, status):
    """limits= sets the request-line, head, header-count and body bounds of each server."""
    limits = Limits(max_head=1024, max_headers=10, max_request_line=256, max_body=100)
    with running(make_server(kind, limits=limits)) as srv:
        raw = exchange(srv.address, request_bytes + NEXT, half_close=False)
        ok = exchange(srv.address, post(b"Content-Length: 100", body=b"a" * 100))
    assert raw.startswith(b"HTTP/1.1 %d " % status)
    assert len(responses(raw, [])) == 1
    assert ok.startswith(b"HTTP/1.1 200 ")


def test_a_chunked_body_over_max_body_is_a_413():
    """A chunked body is refused with 413 as soon as its chunks add up past max_body."""
    with running(WSGIServer(echo_app, limits=Limits(max_body=8))) as srv:
        data = post(b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n")
        raw = exchange(srv.address, data)
    assert raw.startswith(b"HTTP/1.1 413 ")


def test_a_huge_declared_length_reserves_no_memory(kind):
    """Content-Length: 1 GiB with 64 KiB sent: the server reads in bounded pieces and never
    holds much more than what arrived (once, 1 GiB was reserved up front)."""
    with running(make_server(kind)) as srv:
        tracemalloc.start()
        try:
            raw = exchange(srv.address, post(b"Content-Length: %d" % 2**30, body=b"a" * 65536))
            wait_until(lambda: not server_threads(srv), "the connection thread ended")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
    assert raw == b"" or raw.startswith(b"HTTP/1.1 400 ")


# -- response splitting ----------------------------------------------------------------------


class SplittingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        where = self.path.partition("?")[2]
        target = urllib.parse.unquote(self.path.partition("?")[0])
        if where == "status":
            self.send_response(302, "Found\r\nSet-Cookie: evil=1")
        else:
            self.send_response(302)
        if where == "name":
            self.send_header("X-A\r\nSet-Cookie", "evil=1")
        elif where == "nul":
            self.send_header("Location", target + "\0")
        else:
            self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("where", ["value", "name", "status", "nul"])
def test_an_http_handler_cannot_split_its_response(where, log_events):
    """A header or status built with CR, LF or NUL is one 500 on the wire, no injected header."""
    with running(HTTPServer(SplittingHandler)) as srv:
        target = "/a%0d%0aSet-Cookie:%20evil=1" if where in ("value", "nul") else "/a"
        raw = exchange(srv.address, f"GET {target}?{where} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert len(responses(raw, [])) == 1
    assert b"Set-Cookie" not in raw
    events = [e for e in log_events if e["event"] == "response head refused"]
    assert len(events) == 1
    assert "CR, LF or NUL" in events[0]["detail"] or "token" in events[0]["detail"]


def test_a_wsgi_app_cannot_split_its_response():
    """A redirect built from a %0d%0a path: one 500, no Set-Cookie of the attacker's."""

    def app(environ, start_response):
        start_response("302 Found", [("Location", environ["PATH_INFO"]), ("Content-Length", "0")])
        return [b""]

    with running(WSGIServer(app)) as srv:
        raw = exchange(srv.address, b"GET /a%0d%0aSet-Cookie:%20evil=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500 ")
    assert b"Set-Cookie" not in raw


# -- timeouts --------------------------------------------------------------------------------


def test_timeouts_and_the_cap_are_validated(kind):
    """Bad timeouts, caps and limits are refused at construction with a message naming them."""
    with pytest.raises(ValueError, match="head_timeout"):
        make_server(kind, head_timeout=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        make_server(kind, idle_timeout=float("nan"))
    with pytest.raises(ValueError, match="max_connections"):
        make_server(kind, max_connections=0)
    with pytest.raises(TypeError, match="limits"):
        make_server(kind, limits={"max_body": 5})


def connect_and_send(srv: HTTPServer, data: bytes) -> socket.socket:
    sock = socket.create_connection(srv.address, timeout=WAIT)
    if data:
        sock.sendall(data)
    return sock


def wait_for_head(srv: HTTPServer) -> None:
    wait_until(
        lambda: any(c.head_began is not None for c in list(srv._conns.values())),
        "the server holds a partial head",
    )


def test_a_head_not_complete_within_head_timeout_gets_a_408(kind, log_events):
    """Past head_timeout from the head's first byte, the server answers 408 and closes."""
    with running(make_server(kind, head_timeout=30)) as srv:
        sock = connect_and_send(srv, b"GET / HTTP/1.1\r\nHost: x\r\n")
        wait_for_head(srv)
        srv._reap(time.monotonic() + 29)  # not yet
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        sock.settimeout(WAIT)
        srv._reap(time.monotonic() + 31)
        raw = read_all(sock)
        sock.close()
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert [e["status"] for e in log_events if e["event"] == "request refused"] == [408]


def test_a_head_trickled_byte_by_byte_still_times_out(kind):
    """Bytes that keep arriving do not extend the head's deadline (no per-read timeout)."""
    with running(make_server(kind, head_timeout=30)) as srv:
        sock = connect_and_send(srv, b"G")
        wait_for_head(srv)
        began = next(c.head_began for c in list(srv._conns.values()))
        assert began is not None
        for byte in b"ET / HTTP/1.1\r\n":
            sock.sendall(bytes([byte]))
        sock.sendall(b"Host: x\r\n")
        srv._reap(began + 31)
        raw = read_all(sock)
        sock.close()
    assert raw.startswith(b"HTTP/1.1 408 ")


def test_an_idle_keep_alive_connection_is_closed_quietly_after_idle_timeout(kind):
    """A connection waiting for its next request longer than idle_timeout is closed, no answer."""
    with running(make_server(kind, idle_timeout=30)) as srv:
        sock = connect_and_send(srv, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        first = http.client.HTTPResponse(sock)
        first.begin()
        assert first.read() == b"GET /a 0"
        srv._reap(time.monotonic() + 29)
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        sock.settimeout(WAIT)
        srv._reap(time.monotonic() + 31)
        assert read_all(sock) == b""
        sock.close()


def test_a_silent_new_connection_counts_as_idle(kind):
    """A connection that never sends a byte is closed after idle_timeout too."""
    with running(make_server(kind, idle_timeout=30)) as srv:
        sock = connect_and_send(srv, b"")
        wait_until(
            lambda: any(c.awaiting for c in list(srv._conns.values())),
            "the connection waits for its first request",
        )
        srv._reap(time.monotonic() + 31)
        assert read_all(sock) == b""
        sock.close()


@pytest.mark.realtime
def test_the_timeouts_fire_on_their_own(kind):
    """With short timeouts, the server's own clock closes a slow head (408) and an idle one."""
    with running(make_server(kind, head_timeout=0.3, idle_timeout=0.3)) as srv:
        began = time.monotonic()
        slow = connect_and_send(srv, b"GET / HTTP/1.1\r\n")
        idle = connect_and_send(srv, b"")
        assert read_all(slow).startswith(b"HTTP/1.1 408 ")
        assert read_all(idle) == b""
        spent = time.monotonic() - began
        slow.close()
        idle.close()
    assert 0.25 < spent < 0.3 * 2 + 1.0


def test_stop_closes_a_connection_whose_head_is_still_arriving(kind):
    """A slow-head client holds no request: the stop closes it as idle, within the grace
    (it used to stretch every stop to its full timeout)."""
    with running(make_server(kind)) as srv:
        sock = connect_and_send(srv, b"GET / HTTP/1.1\r\nHost: x\r\n")
        wait_for_head(srv)
        began = time.monotonic()
        srv.stop(CancelSource(timeout=WAIT).token)
        spent = time.monotonic() - began
        assert read_all(sock) == b""
        sock.close()
    assert spent < FIRST_REQUEST_GRACE + 1.0


# -- the connection cap ----------------------------------------------------------------------


def test_at_the_cap_an_idle_connection_makes_room_for_a_newcomer(kind, log_events):
    """With max_connections reached by idle keep-alive connections, a newcomer is served at
    once: the longest idle connection is closed for it; the cap is logged once."""
    with running(make_server(kind, max_connections=2)) as srv:
        idle = []
        for name in ("first", "second"):
            conn = http.client.HTTPConnection(*srv.address, timeout=WAIT)
            conn.request("GET", f"/{name}")
            assert conn.getresponse().read() == f"GET /{name} 0".encode()
            idle.append(conn)
        for n in range(3):
            newcomer = http.client.HTTPConnection(*srv.address, timeout=WAIT)
            newcomer.request("GET", f"/new{n}")
            assert newcomer.getresponse().read() == f"GET /new{n} 0".encode()
            newcomer.close()
        assert idle[0].sock is not None
        assert idle[0].sock.recv(100) == b""  # the longest idle one made room
        for conn in idle:
            conn.close()
    capped = [e for e in log_events if e["event"] == "connection limit reached"]
    assert len(capped) == 1
    assert capped[0]["log_level"] == "warning"
    assert capped[0]["max_connections"] == 2


def test_at_the_cap_with_every_connection_busy_a_newcomer_waits_its_turn():
    """When every connection carries a request, the newcomer waits in the backlog (not
    refused, not reset) and is served once a connection ends."""
    entered, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/hold":
            entered.set()
            release.wait(WAIT)
        start_response("200 OK", [("Content-Length", "2"), ("Connection", "close")])
        return [b"ok"]

    with running(WSGIServer(app, max_connections=1)) as srv:
        held = connect_and_send(srv, b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        assert entered.wait(WAIT)
        newcomer = connect_and_send(srv, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        newcomer.settimeout(0.1)
        with pytest.raises(TimeoutError):
            newcomer.recv(100)
        assert len(srv._conns) == 1
        release.set()
        newcomer.settimeout(WAIT)
        assert read_all(held).endswith(b"ok")
        held.close()  # as a client does after Connection: close (the server lingers till then)
        assert read_all(newcomer).endswith(b"ok")
        newcomer.close()
