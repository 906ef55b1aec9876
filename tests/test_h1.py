"""h1: strict request framing, chunked bodies, response-head checks, limits.

Each refusal shape is one parametrised case with its exact verdict (status
and reason). The request-side shapes are those a fuzzing pass found
``http.server`` (and so ``WSGIServer``'s parsing) to accept or to mishandle:
smuggling shapes, a rewritten path, malformed framing answered with a 500 or
a dropped connection, bodies reserved whole, NUL and bare CR accepted,
``HTTP/1.10`` taken for 1.1 and ``GET /`` answered as HTTP/0.9.
"""

from __future__ import annotations

import io
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle import LifecycleError
from lifecycle._serving.h1 import (
    DEFAULT_LIMITS,
    MAX_CHUNK_LINE,
    ChunkedDecoder,
    Framing,
    Head,
    HTTPError,
    LengthDecoder,
    Limits,
    check_response_head,
    find_head_end,
    parse_head,
)

GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n"


def post(*fields: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    """A POST to / with ``fields`` (each a full field line without CRLF) and ``body``."""
    lines = [b"POST / HTTP/" + version, b"Host: example.com", *fields]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def verdict(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[int, str]:
    """(status, reason) of the refusal of one request (head and body) in ``data``."""
    try:
        end = find_head_end(data, limits=limits)
        assert end > 0, "the head is incomplete"
        head = parse_head(data[:end], limits=limits)
        decoder = head.framing.decoder(limits)
        decoder.feed(data[end:])
    except HTTPError as exc:
        return exc.status, exc.reason
    raise AssertionError(f"accepted: {head!r}, done={decoder.done}")


def accepted(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Head, bytes, bytes]:
    """(head, body, what follows the request) of the one complete request at ``data``'s start."""
    end = find_head_end(data, limits=limits)
    head = parse_head(data[:end], limits=limits)
    decoder = head.framing.decoder(limits)
    body = decoder.feed(data[end:])
    assert decoder.done
    return head, body, decoder.unused


CHUNKED = b"Transfer-Encoding: chunked"
FIVE = b"5\r\nhello\r\n0\r\n\r\n"

# (id, request bytes, limits, expected (status, reason))
REFUSED = [
    # Smuggling shapes: two framings of one message.
    (
        "two different Content-Length lines",
        post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"),
        DEFAULT_LIMITS,
        (400, "conflicting Content-Length values"),
    ),
    (
        "two different Content-Length values in a list",
        post(b"Content-Length: 5, 6", body=b"hello!"),
        DEFAULT_LIMITS,
        (400, "conflicting Content-Length values"),
    ),
    (
        "Content-Length spelled two ways (5 and 05)",
        post(b"Content-Length: 5", b"Content-Length: 05", body=b"hello"),
        DEFAULT_LIMITS,
        (400, "conflicting Content-Length values"),
    ),
    (
        "Content-Length with Transfer-Encoding",
        post(b"Content-Length: 5", CHUNKED, body=FIVE),
        DEFAULT_LIMITS,
        (400, "both Content-Length and Transfer-Encoding"),
    ),
    (
        "Transfer-Encoding before Content-Length",
        post(CHUNKED, b"Content-Length: 5", body=FIVE),
        DEFAULT_LIMITS,
        (400, "both Content-Length and Transfer-Encoding"),
    ),
    (
        "Transfer-Encoding gzip alone",
        post(b"Transfer-Encoding: gzip", body=b"hello"),
        DEFAULT_LIMITS,
        (501, "transfer coding not implemented (only chunked is)"),
    ),
    (
        "Transfer-Encoding xchunked (no substring match)",
        post(b"Transfer-Encoding: xchunked", body=FIVE),
        DEFAULT_LIMITS,
        (501, "transfer coding not implemented (only chunked is)"),
    ),
    (
        "Transfer-Encoding chunked, identity",
        post(b"Transfer-Encoding: chunked, identity", body=FIVE),
        DEFAULT_LIMITS,
        (400, "chunked is not the last transfer coding"),
    ),
    (
        "two Transfer-Encoding lines, chunked first",
        post(CHUNKED, b"Transfer-Encoding: gzip", body=FIVE),
        DEFAULT_LIMITS,
        (400, "chunked is not the last transfer coding"),
    ),
    (
        "two Transfer-Encoding lines, chunked last",
        post(b"Transfer-Encoding: gzip", CHUNKED, body=FIVE),
        DEFAULT_LIMITS,
        (501, "transfer coding not implemented (only chunked is)"),
    ),
    (
        "chunked applied twice",
        post(CHUNKED, CHUNKED, body=FIVE),
        DEFAULT_LIMITS,
        (400, "chunked applied more than once"),
    ),
    (
        "empty Transfer-Encoding element",
        post(b"Transfer-Encoding: , chunked", body=FIVE),
        DEFAULT_LIMITS,
        (400, "empty element in Transfer-Encoding"),
    ),
    (
        "Transfer-Encoding in HTTP/1.0",
        post(CHUNKED, body=FIVE, version=b"1.0"),
        DEFAULT_LIMITS,
        (400, "Transfer-Encoding in an HTTP/1.0 request"),
    ),
    (
        "chunk size 0x5",
        post(CHUNKED, body=b"0x5\r\nhello\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "chunk size is not 1 to 16 hex digits"),
    ),
    (
        "chunk size 1_0",
        post(CHUNKED, body=b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "chunk size is not 1 to 16 hex digits"),
    ),
    (
        "chunk size +5",
        post(CHUNKED, body=b"+5\r\nhello\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "chunk size is not 1 to 16 hex digits"),
    ),
    (
        "chunk size with a leading space",
        post(CHUNKED, body=b" 5\r\nhello\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "chunk size is not 1 to 16 hex digits"),
    ),
    (
        "empty chunk size",
        post(CHUNKED, body=b"\r\nhello\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "chunk size is not 1 to 16 hex digits"),
    ),
    (
        "chunk size of 17 hex digits",
        post(CHUNKED, body=b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "chunk size is not 1 to 16 hex digits"),
    ),
    (
        "chunk size with trailing whitespace",
        post(CHUNKED, body=b"5 \r\nhello\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "whitespace after a chunk size"),
    ),
    (
        "whitespace between a chunk size and its extension",
        post(CHUNKED, body=b"5 ;a\r\nhello\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "whitespace after a chunk size"),
    ),
    (
        "chunk extension without a name",
        post(CHUNKED, body=b"5;\r\nhello\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "malformed chunk extension"),
    ),
    (
        "chunk extension with a control character",
        post(CHUNKED, body=b"5;a=\x01\r\nhello\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "malformed chunk extension"),
    ),
    (
        "chunk size line over MAX_CHUNK_LINE",
        post(CHUNKED, body=b"5;a=" + b"b" * MAX_CHUNK_LINE + b"\r\nhello\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "chunk size line too long"),
    ),
    (
        "chunk data not followed by CRLF",
        post(CHUNKED, body=b"5\r\nhello!!\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "chunk data not followed by CRLF"),
    ),
    (
        "chunk size line ending in a bare LF",
        post(CHUNKED, body=b"5\nhello\r\n0\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "bare LF in the chunked body (lines end with CRLF)"),
    ),
    (
        "trailer section ending in a bare LF",
        post(CHUNKED, body=b"5\r\nhello\r\n0\r\n\n"),
        DEFAULT_LIMITS,
        (400, "bare LF in the chunked body (lines end with CRLF)"),
    ),
    (
        "Content-Length in the trailers",
        post(CHUNKED, body=b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "Content-Length or Transfer-Encoding in the trailers"),
    ),
    (
        "obs-fold in the trailers",
        post(CHUNKED, body=b"5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "obs-fold (a line starting with whitespace) in the trailers"),
    ),
    (
        "NUL in the trailers",
        post(CHUNKED, body=b"5\r\nhello\r\n0\r\nX: a\x00b\r\n\r\n"),
        DEFAULT_LIMITS,
        (400, "NUL in the trailers"),
    ),
    (
        "trailers over max_head",
        post(CHUNKED, body=b"0\r\nX: " + b"a" * 200 + b"\r\n\r\n"),
        Limits(max_head=200),
        (431, "trailers too large"),
    ),
    (
        "more trailer lines than max_headers",
        post(CHUNKED, body=b"0\r\n" + b"X: a\r\n" * 4 + b"\r\n"),
        Limits(max_headers=3),
        (431, "too many header lines in the trailers"),
    ),
    # Malformed framing: a 400 (413 for a size), never a crash.
    (
        "Content-Length: superscript two",
        post("Content-Length: ²".encode(), body=b"xx"),
        DEFAULT_LIMITS,
        (400, "Content-Length is not a decimal number"),
    ),
    (
        "Content-Length: +5",
        post(b"Content-Length: +5", body=b"hello"),
        DEFAULT_LIMITS,
        (400, "Content-Length is not a decimal number"),
    ),
    (
        "Content-Length: 0x5",
        post(b"Content-Length: 0x5", body=b"hello"),
        DEFAULT_LIMITS,
        (400, "Content-Length is not a decimal number"),
    ),
    (
        "Content-Length: -1",
        post(b"Content-Length: -1"),
        DEFAULT_LIMITS,
        (400, "Content-Length is not a decimal number"),
    ),
    (
        "empty Content-Length",
        post(b"Content-Length:"),
        DEFAULT_LIMITS,
        (400, "Content-Length is not a decimal number"),
    ),
    (
        "Content-Length list with an empty element",
        post(b"Content-Length: 5,", body=b"hello"),
        DEFAULT_LIMITS,
        (400, "Content-Length is not a decimal number"),
    ),
    (
        "Content-Length 2**63",
        post(b"Content-Length: %d" % 2**63),
        DEFAULT_LIMITS,
        (413, "request body too large"),
    ),
    (
        "Content-Length of 5000 digits (past int()'s digit limit)",
        post(b"Content-Length: " + b"9" * 5000),
        DEFAULT_LIMITS,
        (413, "request body too large"),
    ),
    (
        "Content-Length over max_body",
        post(b"Content-Length: 8589934592"),
        Limits(max_body=1024 * 1024),
        (413, "request body too large"),
    ),
    (
        "chunk over max_body, refused at its size line",
        post(CHUNKED, body=b"200000000\r\n"),
        Limits(max_body=1024 * 1024),
        (413, "request body too large"),
    ),
    (
        "chunks adding up to more than max_body",
        post(CHUNKED, body=b"6\r\nhello!\r\n5\r\nhello\r\n0\r\n\r\n"),
        Limits(max_body=10),
        (413, "request body too large"),
    ),
    (
        "chunk size 16 hex digits past 2**63-1",
        post(CHUNKED, body=b"FFFFFFFFFFFFFFFF\r\n"),
        DEFAULT_LIMITS,
        (413, "request body too large"),
    ),
    # What http.server accepts and should not.
    (
        "NUL in a header value",
        GET + b"X-A: a\x00b\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "NUL in the request head"),
    ),
    (
        "NUL in the target",
        b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "NUL in the request head"),
    ),
    (
        "bare CR in a header value",
        GET + b"X-A: a\rb\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "bare CR in the request head"),
    ),
    (
        "bare CR ending the request line",
        b"GET / HTTP/1.1\rHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "bare CR in the request head"),
    ),
    (
        "control character in a header value",
        GET + b"X-A: a\x01b\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "control character in the request head"),
    ),
    (
        "DEL in a header value",
        GET + b"X-A: a\x7fb\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "control character in the request head"),
    ),
    (
        "HTTP/1.10",
        b"GET / HTTP/1.10\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (505, "HTTP version not supported (HTTP/1.0 and HTTP/1.1 are)"),
    ),
    (
        "HTTP/2.0",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (505, "HTTP version not supported (HTTP/1.0 and HTTP/1.1 are)"),
    ),
    (
        "HTTP/1.2",
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (505, "HTTP version not supported (HTTP/1.0 and HTTP/1.1 are)"),
    ),
    (
        "explicit HTTP/0.9",
        b"GET / HTTP/0.9\r\n\r\n",
        DEFAULT_LIMITS,
        (505, "HTTP version not supported (HTTP/1.0 and HTTP/1.1 are)"),
    ),
    (
        "GET / without a version (HTTP/0.9)",
        b"GET /\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "request line without an HTTP version (HTTP/0.9 is not served)"),
    ),
    (
        "lowercase http/1.1",
        b"GET / http/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "malformed HTTP version"),
    ),
    # The request line.
    (
        "two spaces after the method",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "malformed request line (method SP target SP version)"),
    ),
    (
        "a tab for a space",
        b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "malformed request line (method SP target SP version)"),
    ),
    (
        "a space after the version",
        b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "malformed request line (method SP target SP version)"),
    ),
    (
        "a method that is no token",
        b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "method is not a token"),
    ),
    (
        "a target with obs-text",
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "request target holds a byte outside VCHAR"),
    ),
    (
        "a fragment in the target",
        b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "fragment in the request target"),
    ),
    (
        "* for GET",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "target * is for OPTIONS only"),
    ),
    (
        "authority-form for GET",
        b"GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "request target is neither a path nor an absolute http URI"),
    ),
    (
        "absolute-form with another scheme",
        b"GET ftp://example.com/a HTTP/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "request target is neither a path nor an absolute http URI"),
    ),
    (
        "absolute-form with userinfo",
        b"GET http://user@example.com/a HTTP/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "request target is neither a path nor an absolute http URI"),
    ),
    (
        "CONNECT",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        DEFAULT_LIMITS,
        (501, "CONNECT is not supported"),
    ),
    (
        "an empty line before the request line",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "empty line before the request line"),
    ),
    # Field lines.
    (
        "bare LF line endings",
        b"GET / HTTP/1.1\nHost: a\n\n",
        DEFAULT_LIMITS,
        (400, "bare LF in the request head (lines end with CRLF)"),
    ),
    (
        "a bare LF inside a header line (a hidden second header)",
        GET + b"X-A: a\nTransfer-Encoding: chunked\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "bare LF in the request head (lines end with CRLF)"),
    ),
    (
        "obs-fold",
        GET + b"X-A: a\r\n b\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "obs-fold (a line starting with whitespace) in the request head"),
    ),
    (
        "whitespace before the first header",
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "obs-fold (a line starting with whitespace) in the request head"),
    ),
    (
        "a header line without a colon",
        GET + b"X-A a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "header line without a colon in the request head"),
    ),
    (
        "an empty header name",
        GET + b": a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "empty header name in the request head"),
    ),
    (
        "whitespace before the colon",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello",
        DEFAULT_LIMITS,
        (400, "whitespace before the colon of a header in the request head"),
    ),
    (
        "a space inside a header name",
        GET + b"X A: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "header name is not a token in the request head"),
    ),
    (
        "a header name with obs-text",
        GET + b"X-\xe9: a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "header name is not a token in the request head"),
    ),
    (
        "missing Host in HTTP/1.1",
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "missing Host header"),
    ),
    (
        "two Host lines",
        GET + b"Host: other.example\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "more than one Host header"),
    ),
    (
        "two Host lines in HTTP/1.0",
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "more than one Host header"),
    ),
    (
        "Host with a space",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "invalid Host header"),
    ),
    (
        "Host with userinfo",
        b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
        DEFAULT_LIMITS,
        (400, "invalid Host header"),
    ),
    # Limits.
    (
        "request line over max_request_line",
        b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        Limits(max_request_line=64),
        (414, "request line too long"),
    ),
    (
        "head over max_head",
        GET + b"X-A: " + b"a" * 300 + b"\r\n\r\n",
        Limits(max_head=256),
        (431, "request head too large"),
    ),
    (
        "more header lines than max_headers",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: a\r\n" * 3 + b"\r\n",
        Limits(max_headers=3),
        (431, "too many header lines in the request head"),
    ),
]


@pytest.mark.parametrize(
    ("data", "limits", "expected"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_refused_shapes(data, limits, expected):
    """Each malformed or ambiguous request is refused with its exact status and reason."""
    assert expected == verdict(data, limits)


def test_refusals_are_http_errors_and_lifecycle_errors():
    """HTTPError is a ValueError and a LifecycleError; str() gives the status and reason."""
    with pytest.raises(HTTPError) as info:
        parse_head(b"GET / HTTP/2.0\r\n\r\n")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LifecycleError)
    expected = "505 HTTP version not supported (HTTP/1.0 and HTTP/1.1 are)"
    assert expected == str(info.value)


def test_detail_escapes_the_offending_bytes():
    """The detail of a refusal shows the bad bytes escaped and cut short, never raw."""
    with pytest.raises(HTTPError) as info:
        parse_head(post(b"Content-Length: 5\x1b[31m" + b"9" * 200))
    detail = info.value.detail
    assert detail.isprintable()
    assert "\x1b" not in detail
    assert len(detail) < 100


# -- what is accepted -----------------------------------------------------------------------


def test_a_path_holding_a_scheme_stays_the_path():
    """/public/http://x/admin is a path: it is not read as an absolute URI."""
    head, _, _ = accepted(b"GET /public/http://x/admin?a=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (head.path, head.query) == (b"/public/http://x/admin", b"a=1")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"http://example.com/admin?x=1", (b"/admin", b"x=1")),
        (b"HTTPS://example.com:8443/a/b", (b"/a/b", b"")),
        (b"http://example.com", (b"/", b"")),
        (b"http://example.com?q", (b"/", b"q")),
        (b"http://[::1]:80/v6", (b"/v6", b"")),
    ],
)
def test_absolute_form_gives_the_uri_path(target, expected):
    """An absolute-form target (it does not start with /) yields its URI's path and query."""
    head, _, _ = accepted(b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert expected == (head.path, head.query)


def test_options_asterisk():
    """OPTIONS * is accepted, with path *."""
    head, _, _ = accepted(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (head.method, head.path, head.query) == (b"OPTIONS", b"*", b"")


def test_a_browser_like_get():
    """A typical GET: method, target, version, headers in order, lowercased names, no body."""
    data = (
        b"GET /search?q=a HTTP/1.1\r\nHost: example.com\r\nUser-Agent:  Mozilla/5.0 \r\n"
        b"Accept: */*\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n"
    )
    head, body, rest = accepted(data)
    expected = Head(
        method=b"GET",
        target=b"/search?q=a",
        version=(1, 1),
        headers=[
            (b"host", b"example.com"),
            (b"user-agent", b"Mozilla/5.0"),
            (b"accept", b"*/*"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ],
        framing=Framing.NONE,
        keep_alive=True,
        path=b"/search",
        query=b"q=a",
    )
    assert (expected, b"", b"") == (head, body, rest)
    assert (
        head.get(b"cookie"),
        head.get_all(b"cookie"),
        head.get(b"x-missing"),
    ) == (b"a=1, b=2", [b"a=1", b"b=2"], None)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ((b"Content-Length: 5",), Framing.LENGTH(5)),
        ((b"Content-Length: 5, 5",), Framing.LENGTH(5)),
        ((b"Content-Length: 5", b"Content-Length: 5"), Framing.LENGTH(5)),
        ((b"Content-Length: 0005",), Framing.LENGTH(5)),
        ((b"Transfer-Encoding: chunked",), Framing.CHUNKED),
        ((b"Transfer-Encoding: CHUNKED ",), Framing.CHUNKED),
        ((), Framing.NONE),
    ],
)
def test_framing(fields, expected):
    """Content-Length (equal values, leading zeros), chunked (any case) and none are framed."""
    head = parse_head(post(*fields))
    assert expected == head.framing


def test_framing_kinds():
    """NONE has no body, LENGTH(n) n bytes, CHUNKED an unknown length."""
    assert (
        Framing.NONE.body_length,
        Framing.LENGTH(7).body_length,
        Framing.CHUNKED.body_length,
    ) == (0, 7, None)
    assert Framing.LENGTH(0) != Framing.NONE


@pytest.mark.parametrize(
    ("version", "connection", "expected"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive, CLOSE", False),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
        (b"1.0", b"keep-alive, close", False),
    ],
)
def test_keep_alive(version, connection, expected):
    """HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only with keep-alive."""
    fields = () if connection is None else (b"Connection: " + connection,)
    head = parse_head(post(*fields, version=version))
    assert (expected, not expected) == (head.keep_alive, head.close_after)


def test_http10_needs_no_host():
    """An HTTP/1.0 request without Host is accepted."""
    head, _, _ = accepted(b"GET / HTTP/1.0\r\n\r\n")
    assert (head.version, head.headers) == ((1, 0), [])


@pytest.mark.parametrize(
    ("version", "expect", "expected"),
    [
        (b"1.1", b"100-continue", True),
        (b"1.1", b"100-Continue", True),
        (b"1.0", b"100-continue", False),
    ],
)
def test_expect_continue(version, expect, expected):
    """Expect: 100-continue is honoured in HTTP/1.1 only."""
    head = parse_head(post(b"Expect: " + expect, b"Content-Length: 1", version=version))
    assert expected == head.expect_continue


@pytest.mark.parametrize(
    "host", [b"", b"example.com", b"example.com:8080", b"[::1]:80", b"10.0.0.1", b"a-b.c_d~e"]
)
def test_valid_hosts(host):
    """Host may be empty, a name, an address or an IP literal, with or without a port."""
    head = parse_head(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert host == head.get(b"host")


def test_header_values_keep_inner_whitespace_and_obs_text():
    """A value keeps its inner SP and HTAB and obs-text; only the ends are trimmed."""
    head = parse_head(GET + b"X-A: \t a \t b\xe9 \t\r\nX-B:\r\n\r\n")
    assert head.headers[1:] == [(b"x-a", b"a \t b\xe9"), (b"x-b", b"")]


def test_limits_at_their_bound_are_accepted():
    """A request line of exactly max_request_line and a head of exactly max_head pass."""
    line = b"GET /" + b"a" * 50 + b" HTTP/1.1"
    data = line + b"\r\nHost: a\r\nX-A: b\r\n\r\n"
    limits = Limits(max_request_line=len(line), max_head=len(data), max_headers=2)
    head, _, _ = accepted(data, limits)
    assert len(head.headers) == 2


def test_pipelined_requests_split_where_the_body_ends():
    """The bytes after a body (by length or chunked) are the next request, untouched."""
    second = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    _, body, rest = accepted(post(b"Content-Length: 5", body=b"hello" + second))
    assert (b"hello", second) == (body, rest)
    _, body, rest = accepted(post(CHUNKED, body=FIVE + second))
    assert (b"hello", second) == (body, rest)


def test_chunk_extensions_and_trailers():
    """Extensions (token or quoted values, inner BWS) are skipped; trailers parse like fields."""
    body = b'5; a = b ;c="x;\\"y"\r\nhello\r\n3;d\r\n!!!\r\n0\r\nX-Sum: 1\r\nX-B:  2 \r\n\r\n'
    decoder = ChunkedDecoder()
    assert decoder.feed(body) == b"hello!!!"
    assert (
        decoder.done,
        decoder.trailers,
        decoder.unused,
    ) == (True, [(b"x-sum", b"1"), (b"x-b", b"2")], b"")


def test_chunked_body_at_max_body_is_accepted():
    """A chunked body of exactly max_body bytes passes."""
    decoder = ChunkedDecoder(Limits(max_body=10))
    assert decoder.feed(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n") == b"helloworld"


# -- finding the end of the head --------------------------------------------------------------


def test_find_head_end():
    """The end is just past the first empty line; -1 while it has not arrived."""
    data = GET + b"\r\n" + b"GET /next"
    assert (len(GET) + 2, -1, -1) == (
        find_head_end(data),
        find_head_end(GET),
        find_head_end(b""),
    )


def test_find_head_end_delimits_bare_lf_heads_so_they_are_refused_at_once():
    """A head ending in a bare-LF empty line is delimited; parse_head then refuses it."""
    data = b"GET / HTTP/1.1\r\nHost: a\n\nrest"
    end = find_head_end(data)
    assert len(data) - 4 == end
    with pytest.raises(HTTPError, match="bare LF"):
        parse_head(data[:end])


@given(st.integers(min_value=1, max_value=40))
def test_find_head_end_resumes_where_it_stopped(step):
    """Fed in pieces with start= the previous length, the end found is the same."""
    data = GET + b"X-A: b\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    buffer, searched, end = b"", 0, -1
    while end < 0:
        buffer += data[len(buffer) : len(buffer) + step]
        end = find_head_end(buffer, searched)
        searched = len(buffer)
    assert len(GET) + 10 == end


def test_find_head_end_refuses_early():
    """A request line or head too long is refused before its end arrives."""
    limits = Limits(max_request_line=16, max_head=64)
    with pytest.raises(HTTPError, match="request line too long"):
        find_head_end(b"GET /" + b"a" * 20, limits=limits)
    with pytest.raises(HTTPError, match="request head too large"):
        find_head_end(b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 9, limits=limits)
    assert find_head_end(b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 7, limits=limits) == -1


# -- chunked decoding is the same in any pieces -----------------------------------------------

chunks = st.lists(st.binary(min_size=1, max_size=40), max_size=6)
extensions = st.sampled_from([b"", b";a", b";a=b", b';a="q\\"x"', b";a; b = c"])
trailer_lines = st.lists(st.sampled_from([b"X-A: 1", b"X-B:", b'Etag: "x"']), max_size=3)


@st.composite
def chunked_bodies(draw):
    """(encoded chunked body followed by the next request's start, body, trailers)."""
    parts = draw(chunks)
    encoded = b"".join(
        b"%s%s\r\n%s\r\n"
        % (draw(st.sampled_from([b"%x", b"%X", b"%04x"])) % len(p), draw(extensions), p)
        for p in parts
    )
    trailers = draw(trailer_lines)
    encoded += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
    return encoded + b"GET /", b"".join(parts), trailers


def _feed_in(decoder, data, cuts):
    out = b""
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        out += decoder.feed(data[a:b])
    return out


@settings(max_examples=300, deadline=None)
@given(chunked_bodies(), st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_chunked_decoding_in_any_pieces(case, cuts):
    """Decoding in any pieces, byte by byte or at once, gives the same body, trailers, rest."""
    encoded, body, trailers = case
    results = []
    for pieces in (None, cuts, range(len(encoded))):
        decoder = ChunkedDecoder()
        data = decoder.feed(encoded) if pieces is None else _feed_in(decoder, encoded, pieces)
        results.append((data, decoder.done, decoder.trailers, decoder.unused))
    expected = (
        body,
        True,
        [(t.split(b":")[0].lower(), t.split(b":", 1)[1].strip()) for t in trailers],
        b"GET /",
    )
    assert [expected] * 3 == results


@settings(max_examples=200, deadline=None)
@given(chunked_bodies())
def test_a_blocking_reader_guided_by_expected_never_reads_past_the_body(case):
    """read(expected) when positive, readline() when 0: the stream stops at the body's end."""
    encoded, body, _ = case
    stream = io.BytesIO(encoded)
    decoder = ChunkedDecoder()
    out = b""
    while not decoder.done:
        n = decoder.expected
        data = stream.read(min(n, 7)) if n else stream.readline(MAX_CHUNK_LINE)
        assert data, "the reader ran out before the body ended"
        out += decoder.feed(data)
    assert (body, b"GET /", b"") == (out, stream.read(), decoder.unused)


def test_length_decoder():
    """A LengthDecoder passes exactly its length and keeps the rest as unused."""
    decoder = LengthDecoder(5)
    pieces = [decoder.feed(b"he"), decoder.feed(b"llo GET"), decoder.feed(b" /")]
    assert (
        pieces,
        decoder.done,
        decoder.unused,
        decoder.expected,
    ) == ([b"he", b"llo", b""], True, b" GET /", 0)


def test_feeding_a_finished_chunked_decoder_keeps_the_bytes():
    """Bytes fed after the end are added to unused, not decoded."""
    decoder = ChunkedDecoder()
    decoder.feed(b"0\r\n\r\nGET")
    assert (decoder.feed(b" /"), decoder.unused) == (b"", b"GET /")


# -- any bytes: an answer or an HTTPError, nothing else ---------------------------------------


def _refusal(call, data):
    """The HTTPError ``call(data)`` raises, or None; any other exception propagates."""
    try:
        call(data)
    except HTTPError as exc:
        return exc
    return None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_heads_raise_only_http_errors(data):
    """On any bytes, parse_head returns a Head or raises HTTPError with a printable message."""
    refusal = _refusal(parse_head, data)
    if refusal is not None:
        assert refusal.status in {400, 413, 414, 431, 501, 505}
        assert str(refusal).isprintable()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_chunked_bodies_raise_only_http_errors(data):
    """On any bytes, ChunkedDecoder.feed returns data or raises HTTPError 400, 413 or 431."""
    refusal = _refusal(ChunkedDecoder().feed, data)
    if refusal is not None:
        assert refusal.status in {400, 413, 431}
        assert str(refusal).isprintable()


# -- limits -----------------------------------------------------------------------------------


def test_default_limits():
    """The defaults: 64 KiB head, 100 header lines, 8 KiB request line, no body limit."""
    assert (
        DEFAULT_LIMITS.max_head,
        DEFAULT_LIMITS.max_headers,
        DEFAULT_LIMITS.max_request_line,
        DEFAULT_LIMITS.max_body,
    ) == (65536, 100, 8192, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_head": 0}, "Limits.max_head must be a positive int, got 0"),
        ({"max_headers": -1}, "Limits.max_headers must be a positive int, got -1"),
        ({"max_request_line": 1.5}, "Limits.max_request_line must be a positive int, got 1.5"),
        ({"max_body": -1}, "Limits.max_body must be None (no limit) or an int >= 0, got -1"),
    ],
)
def test_invalid_limits_are_refused(kwargs, message):
    """A limit that is not a positive int (max_body: None or >= 0) is refused by name."""
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        Limits(**kwargs)


# -- response heads ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, []),
        ("200 OK", [("Content-Type", "text/plain")]),
        ("204", []),
        (b"302 Found", [(b"Location", b"/next?a=%0d%0a")]),
        ("599 Custom reason, with\ttab", [("X-Latin", "caf\xe9")]),
    ],
)
def test_valid_response_heads_pass(status, headers):
    """Codes 100-599, 'NNN reason' statuses and clean latin-1 headers pass."""
    check_response_head(status, headers)


@pytest.mark.parametrize(
    ("status", "headers", "detail"),
    [
        ("302 Found", [("Location", "/a\r\nSet-Cookie: x=1")], "holds CR, LF or NUL"),
        ("200 OK", [("X-A", "a\nb")], "holds CR, LF or NUL"),
        ("200 OK", [("X-A", "a\x00b")], "holds CR, LF or NUL"),
        ("200 OK", [(b"X-A", b"a\rb")], "holds CR, LF or NUL"),
        ("200 OK\r\nSet-Cookie: x=1", [], "is not 'NNN reason'"),
        ("200 OK\x00", [], "is not 'NNN reason'"),
        ("²00 OK", [], "is not 'NNN reason'"),
        ("20 OK", [], "is not 'NNN reason'"),
        ("600 Nope", [], "is not 'NNN reason'"),
        (99, [], "is not a code from 100 to 599"),
        (True, [], "is not a code from 100 to 599"),
        ("200 OK", [("X A", "b")], "is not a token"),
        ("200 OK", [("X-A\r\nSet-Cookie", "x=1")], "is not a token"),
        ("200 OK", [("", "b")], "is not a token"),
        ("200 OK", [("X-A:", "b")], "is not a token"),
        ("200 OK", [("X-A", "\u20ac")], "is not latin-1"),
        ("200 OK", [("Content-Length", 5)], "must be a str, got int"),
    ],
)
def test_response_splitting_and_malformed_heads_are_refused(status, headers, detail):
    """CR, LF or NUL in the status or a header, a non-token name, bad codes: a 500."""
    with pytest.raises(HTTPError) as info:
        check_response_head(status, headers)
    assert (info.value.status, info.value.reason) == (500, "Internal Server Error")
    assert detail in info.value.detail
    assert info.value.detail.isprintable()
