"""Malformed and edge-case HTTP/1.1 requests, for the differential test against h11.

`CORPUS` holds hand-written shapes (request smuggling, header injection,
path tricks, versions, limits) and families generated from lists of values
(each Content-Length value, each Transfer-Encoding, each chunk size, each
version, target, method, injected byte at each place). Most cases are
followed by `NEXT`, a well-formed second request, so that a parser that
frames the first one differently shows it as a different second request.

The hypothesis strategies build requests h11 and lifecycle must both accept
(`valid_requests`) and mutate them into doubtful ones (`mutated_requests`).
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
from hypothesis import strategies as st

__all__ = ["CORPUS", "NEXT", "Case", "mutated_requests", "valid_requests"]

NEXT = b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n"
HOST = b"Host: example.com"
CHUNKED = b"Transfer-Encoding: chunked"
HELLO = b"5\r\nhello\r\n0\r\n\r\n"


@attrs.frozen
class Case:
    """One corpus entry: a readable name and the bytes a client sends."""

    name: str
    data: bytes


def request(
    method: bytes = b"GET",
    target: bytes = b"/",
    version: bytes = b"HTTP/1.1",
    fields: tuple[bytes, ...] = (HOST,),
    body: bytes = b"",
) -> bytes:
    """A request from its parts; each field is a whole line without its CRLF."""
    head = b"%s %s %s\r\n" % (method, target, version)
    return head + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def post(*fields: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    """A POST to /upload with Host, ``fields`` and ``body``."""
    return request(b"POST", b"/upload", version, (HOST, *fields), body)


HAND = [
    # Request smuggling: two framings of one message.
    Case("CL.CL different", post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!")),
    Case("CL.CL equal", post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello" + NEXT)),
    Case("CL list equal", post(b"Content-Length: 5, 5", body=b"hello" + NEXT)),
    Case("CL list different", post(b"Content-Length: 5, 50", body=b"hello" + NEXT)),
    Case(
        "CL.TE",
        post(b"Content-Length: 4", CHUNKED, body=b"5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n"),
    ),
    Case("TE.CL", post(CHUNKED, b"Content-Length: 3", body=b"8\r\nSMUGGLED\r\n0\r\n\r\n")),
    Case("CL.TE smuggling a GET", post(b"Content-Length: 6", CHUNKED, body=b"0\r\n\r\nX" + NEXT)),
    Case("TE.TE obfuscated space", post(CHUNKED, b"Transfer-Encoding : x", body=HELLO)),
    Case("TE.TE identity second", post(CHUNKED, b"Transfer-Encoding: identity", body=HELLO)),
    Case("TE with a tab before the value", post(b"Transfer-Encoding:\tchunked", body=HELLO + NEXT)),
    Case("TE with a vertical tab", post(b"Transfer-Encoding:\x0bchunked", body=HELLO)),
    Case("TE name with a space", post(b"Transfer-Encoding : chunked", body=HELLO)),
    Case("TE in obs-fold", post(b"X-A: b", b" Transfer-Encoding: chunked", body=HELLO)),
    Case("TE after obs-fold", post(b"Transfer-Encoding:", b" chunked", body=HELLO)),
    Case("TE hidden by bare LF", post(b"X-A: b\nTransfer-Encoding: chunked", body=HELLO)),
    Case("TE hidden by bare CR", post(b"X-A: b\rTransfer-Encoding: chunked", body=HELLO)),
    Case("CL hidden by bare LF", post(b"X-A: b\nContent-Length: 5", body=b"hello" + NEXT)),
    Case("TE in HTTP/1.0", post(CHUNKED, body=HELLO + NEXT, version=b"HTTP/1.0")),
    Case("TE with CL in HTTP/1.0", post(CHUNKED, b"Content-Length: 5", version=b"HTTP/1.0")),
    Case("chunked then gzip", post(b"Transfer-Encoding: chunked, gzip", body=HELLO)),
    Case("gzip then chunked", post(b"Transfer-Encoding: gzip, chunked", body=HELLO)),
    Case("gzip alone with a body", post(b"Transfer-Encoding: gzip", body=b"hello" + NEXT)),
    Case("xchunked", post(b"Transfer-Encoding: xchunked", body=HELLO + NEXT)),
    Case("chunked, identity", post(b"Transfer-Encoding: chunked, identity", body=HELLO + NEXT)),
    Case("two TE lines chunked, gzip", post(CHUNKED, b"Transfer-Encoding: gzip", body=HELLO)),
    Case("two TE lines both chunked", post(CHUNKED, CHUNKED, body=HELLO + NEXT)),
    Case("chunk-size 0x5", post(CHUNKED, body=b"0x5\r\nhello\r\n0\r\n\r\n" + NEXT)),
    Case("chunk-size 1_0", post(CHUNKED, body=b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n")),
    Case("chunk-size +5", post(CHUNKED, body=b"+5\r\nhello\r\n0\r\n\r\n" + NEXT)),
    Case("chunk-size -5", post(CHUNKED, body=b"-5\r\nhello\r\n0\r\n\r\n")),
    Case("last chunk without the final CRLF", post(CHUNKED, body=b"5\r\nhello\r\n0\r\n")),
    Case("last chunk then a request", post(CHUNKED, body=b"0\r\n" + NEXT)),
    Case("chunk data short", post(CHUNKED, body=b"5\r\nhell\r\n0\r\n\r\n" + NEXT)),
    Case("chunk data long", post(CHUNKED, body=b"5\r\nhello!\r\n0\r\n\r\n" + NEXT)),
    Case("chunk data then LF only", post(CHUNKED, body=b"5\r\nhello\n0\r\n\r\n" + NEXT)),
    Case("trailer Content-Length", post(CHUNKED, body=b"0\r\nContent-Length: 5\r\n\r\n" + NEXT)),
    Case("trailer bad Content-Length", post(CHUNKED, body=b"0\r\nContent-Length: x\r\n\r\n")),
    Case("trailer Transfer-Encoding", post(CHUNKED, body=b"0\r\nTransfer-Encoding: gzip\r\n\r\n")),
    Case("trailer fine", post(CHUNKED, body=b"0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n" + NEXT)),
    Case("trailer without colon", post(CHUNKED, body=b"0\r\nX-Sum 1\r\n\r\n" + NEXT)),
    Case("trailer obs-fold", post(CHUNKED, body=b"0\r\nX-Sum: 1\r\n 2\r\n\r\n" + NEXT)),
    Case("trailer with NUL", post(CHUNKED, body=b"0\r\nX-Sum: 1\x002\r\n\r\n" + NEXT)),
    Case("trailer with bare LF end", post(CHUNKED, body=b"0\r\nX-Sum: 1\n\r\n" + NEXT)),
    Case("trailers end in bare LF", post(CHUNKED, body=b"0\r\nX-Sum: 1\r\n\n" + NEXT)),
    Case("extra CRLF after a body", post(b"Content-Length: 5", body=b"hello\r\n" + NEXT)),
    Case("CL shorter than the body", post(b"Content-Length: 3", body=b"hello" + NEXT)),
    Case("CL longer than the body", post(b"Content-Length: 50", body=b"hello" + NEXT)),
    Case("CL zero then a body", post(b"Content-Length: 0", body=b"hello" + NEXT)),
    Case("GET with a body", request(fields=(HOST, b"Content-Length: 5"), body=b"hello" + NEXT)),
    Case("Expect 100-continue", post(b"Expect: 100-continue", b"Content-Length: 5", body=b"hello")),
    # The path and the target.
    Case("path holding a scheme", request(target=b"/public/http://x/admin") + NEXT),
    Case("absolute-form", request(target=b"http://example.com/admin?x=1") + NEXT),
    Case("absolute-form, no path", request(target=b"http://example.com") + NEXT),
    Case("absolute-form, query only", request(target=b"http://example.com?q=1") + NEXT),
    Case("absolute-form https upper", request(target=b"HTTPS://EXAMPLE.COM/A") + NEXT),
    Case("absolute-form ftp", request(target=b"ftp://example.com/a") + NEXT),
    Case("absolute-form userinfo", request(target=b"http://u:p@example.com/a") + NEXT),
    Case("absolute-form empty authority", request(target=b"http:///a") + NEXT),
    Case("scheme-relative //host/path", request(target=b"//example.com/a") + NEXT),
    Case("authority-form for GET", request(target=b"example.com:443") + NEXT),
    Case("CONNECT", request(b"CONNECT", b"example.com:443", fields=(b"Host: example.com:443",))),
    Case("OPTIONS *", request(b"OPTIONS", b"*") + NEXT),
    Case("GET *", request(b"GET", b"*") + NEXT),
    Case("OPTIONS */a", request(b"OPTIONS", b"*/a") + NEXT),
    Case("target with a fragment", request(target=b"/a#frag") + NEXT),
    Case("target with %0d%0a", request(target=b"/a%0d%0aSet-Cookie:x") + NEXT),
    Case("target with raw UTF-8", request(target="/caf\u00e9".encode()) + NEXT),
    Case("target with a backslash", request(target=b"/a\\..\\b") + NEXT),
    Case("target with braces and pipes", request(target=b"/a{b}|c^d`e") + NEXT),
    Case("target query only", request(target=b"?a=1") + NEXT),
    # Versions and the request line.
    Case("HTTP/0.9 GET /", b"GET /\r\n\r\n"),
    Case("HTTP/0.9 GET / with a LF", b"GET /\n"),
    Case("request line without target", b"GET HTTP/1.1\r\nHost: a\r\n\r\n"),
    Case("request line of one word", b"GET\r\nHost: a\r\n\r\n"),
    Case("four words", b"GET / x HTTP/1.1\r\nHost: a\r\n\r\n"),
    Case("leading space", b" GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    Case("leading CRLF", b"\r\n" + NEXT),
    Case("two leading CRLF", b"\r\n\r\n" + NEXT),
    Case("leading LF", b"\n" + NEXT),
    Case("only CRLF CRLF", b"\r\n\r\n"),
    Case("TLS client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20),
    Case("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    Case("empty input", b""),
    Case("incomplete head", b"GET / HTTP/1.1\r\nHost: a\r\n"),
    Case("incomplete request line", b"GET / HTT"),
    # Field lines.
    Case("bare LF everywhere", b"GET / HTTP/1.1\nHost: a\n\n" + NEXT),
    Case("bare LF at the end only", b"GET / HTTP/1.1\r\nHost: a\r\n\n" + NEXT),
    Case("CR CR LF", b"GET / HTTP/1.1\r\r\nHost: a\r\n\r\n" + NEXT),
    Case("obs-fold", request(fields=(HOST, b"X-A: a", b"  b")) + NEXT),
    Case("obs-fold with a tab", request(fields=(HOST, b"X-A: a", b"\tb")) + NEXT),
    Case("whitespace before the first field", request(fields=(b" " + HOST,)) + NEXT),
    Case("field without colon", request(fields=(HOST, b"X-A b")) + NEXT),
    Case("empty field name", request(fields=(HOST, b": b")) + NEXT),
    Case("colon only", request(fields=(HOST, b":")) + NEXT),
    Case("space before the colon", request(fields=(HOST, b"X-A : b")) + NEXT),
    Case("tab before the colon", request(fields=(HOST, b"X-A\t: b")) + NEXT),
    Case("space inside a name", request(fields=(HOST, b"X A: b")) + NEXT),
    Case("name with a slash", request(fields=(HOST, b"X/A: b")) + NEXT),
    Case("name with obs-text", request(fields=(HOST, b"X-\xc3\xa4: b")) + NEXT),
    Case("name with a NUL", request(fields=(HOST, b"X-\x00A: b")) + NEXT),
    Case("value with obs-text", request(fields=(HOST, b"X-A: caf\xc3\xa9")) + NEXT),
    Case("value with HTAB inside", request(fields=(HOST, b"X-A: a\tb")) + NEXT),
    Case("value empty", request(fields=(HOST, b"X-A:")) + NEXT),
    Case("value of spaces", request(fields=(HOST, b"X-A:    ")) + NEXT),
    Case("value with DEL", request(fields=(HOST, b"X-A: a\x7fb")) + NEXT),
    Case("value with \\x01", request(fields=(HOST, b"X-A: a\x01b")) + NEXT),
    Case("value with \\x1f", request(fields=(HOST, b"X-A: a\x1fb")) + NEXT),
    Case("value with form feed", request(fields=(HOST, b"X-A: a\x0cb")) + NEXT),
    Case("underscore in name", request(fields=(HOST, b"X_Forwarded_For: 1.2.3.4")) + NEXT),
    Case("many colons", request(fields=(HOST, b"X-A: b: c: d")) + NEXT),
    # Host.
    Case("no Host in 1.1", request(fields=()) + NEXT),
    Case("no Host in 1.0", request(version=b"HTTP/1.0", fields=()) + NEXT),
    Case("two Host lines", request(fields=(HOST, b"Host: evil.example")) + NEXT),
    Case("two Host lines in 1.0", request(version=b"HTTP/1.0", fields=(HOST, HOST))),
    Case("Host list", request(fields=(b"Host: a, b",)) + NEXT),
    Case("Host empty", request(fields=(b"Host:",)) + NEXT),
    Case("Host with port", request(fields=(b"Host: example.com:8080",)) + NEXT),
    Case("Host IPv6", request(fields=(b"Host: [::1]:8080",)) + NEXT),
    Case("Host with space", request(fields=(b"Host: a b",)) + NEXT),
    Case("Host with userinfo", request(fields=(b"Host: u@a",)) + NEXT),
    Case("Host with a path", request(fields=(b"Host: a/b",)) + NEXT),
    Case("Host upper-case name", request(fields=(b"HOST: example.com",)) + NEXT),
    # Persistence.
    Case("1.1 Connection close", request(fields=(HOST, b"Connection: close")) + NEXT),
    Case(
        "1.0 keep-alive", request(version=b"HTTP/1.0", fields=(b"Connection: keep-alive",)) + NEXT
    ),
    Case("1.0 plain", request(version=b"HTTP/1.0", fields=()) + NEXT),
    Case(
        "Upgrade websocket", request(fields=(HOST, b"Connection: Upgrade", b"Upgrade: websocket"))
    ),
    Case(
        "Upgrade h2c",
        request(fields=(HOST, b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c")),
    ),
    Case("three pipelined GETs", NEXT + NEXT + NEXT),
    Case("POST then GET", post(b"Content-Length: 5", body=b"hello" + NEXT)),
    Case("chunked POST then GET", post(CHUNKED, body=HELLO + NEXT)),
    # Limits.
    Case("request line of 8192 bytes", request(target=b"/" + b"a" * 8178) + NEXT),
    Case("request line of 8193 bytes", request(target=b"/" + b"a" * 8179) + NEXT),
    Case("header of 20 KiB", request(fields=(HOST, b"X-A: " + b"a" * 20480)) + NEXT),
    Case("head of 70 KiB", request(fields=(HOST, *[b"X-A: " + b"a" * 1000] * 70)) + NEXT),
    Case("100 header lines", request(fields=(HOST, *[b"X-A: b"] * 99)) + NEXT),
    Case("101 header lines", request(fields=(HOST, *[b"X-A: b"] * 100)) + NEXT),
    Case(
        "chunk size line of 5 KiB",
        post(CHUNKED, body=b"5;a=" + b"b" * 5000 + b"\r\nhello\r\n0\r\n\r\n"),
    ),
]

NEXT_BODY = b"hello" + NEXT

CONTENT_LENGTHS = [
    b"5", b"05", b"00005", b" 5", b"5 ", b"\t5\t", b"5, 5", b"5,5", b"5 ,5", b"5, 6", b"5,,5",
    b"+5", b"-5", b"0x5", "²".encode(), "\u0665".encode(), b"5.0", b"5e0", b"", b",", b"5,",
    b",5", b"5 5", b"1" * 19, b"9" * 20, b"9" * 25, b"%d" % 2**63, b"%d" % (2**63 - 1), b"0",
    b"4", b"6", b"5\x00", b"5\x0b",
]  # fmt: skip

TRANSFER_ENCODINGS = [
    b"chunked", b"Chunked", b"CHUNKED", b" chunked ", b"chunked,", b", chunked",
    b"chunked, chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b"identity, chunked",
    b"gzip", b"xchunked", b"chunkedx", b"chunked;q=1", b'"chunked"', b"chunked identity", b"",
    b"chun ked", b"\tchunked", b"chunked\t", b"ch\xc3\xbcnked", b"deflate,chunked", b",",
    b"chunked ,", b"x-chunked",
]  # fmt: skip

CHUNK_SIZES = [
    b"5", b"05", b"0005", b"5;a", b"5;a=b", b'5;a="b"', b'5;a="b;c"', b"5 ;a", b"5; a", b"5;a = b",
    b"5 ", b" 5", b"+5", b"-5", b"0x5", b"1_0", b"5\t", b"", b"g", b"5.0", b"0000000000000005",
    b"00000000000000005", b"FFFFFFFFFFFFFFFF", b"5;", b"5;=b", b"5;a=", b"5;a=b c", b"5;a=\x01",
    b'5;a="b', b"5;a=b;", b"5\x00", b"5\r", b"4", b"6", b"0", b"a", b"A",
]  # fmt: skip

CHUNK_ENDS = [b"\r\n", b"\n", b"\r", b"", b"XX", b"\r\r\n", b" \r\n", b"\r\n\r\n"]

VERSIONS = [
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.10", b"HTTP/01.1",
    b"HTTP/1", b"HTTP/1.", b"HTTP/.1", b"http/1.1", b"Http/1.1", b"HTTP /1.1", b"HTTP/1.1 ",
    b"HTTPS/1.1", b"HTTP/1.1\x00", b"HTTP/3", b"HTTP/1.1\t", b"HTTP\\1.1", b"HTTP/\xb9.1",
]  # fmt: skip

TARGETS = [
    b"/", b"/a?b=c", b"/a?b?c", b"*", b"http://a/b", b"https://a", b"HTTP://A/B", b"a:80", b"//a",
    b"/public/http://x/admin", b"/a#b", b"/\xff", b"ftp://a/b", b"http://", b"http:///a",
    b"/%00", b"?a", b"http://u@a/", b"http://a:80/b", b"http://[::1]/", b"a", b"/a/../b",
    b"http://a/b#c", b"mailto:a@b",
]  # fmt: skip

METHODS = [
    b"GET", b"get", b"G(T", b"PATCH", b"M-SEARCH", b"X" * 100, b"G\xc3\xa9T", b"G\x00T", b"GET\x0b",
    b"OPTIONS", b"CONNECT", b"HEAD", b"!#$%&'*+-.^_`|~",
]  # fmt: skip

INJECTED = [
    b"\x00",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x0b",
    b"\x0c",
    b"\x01",
    b"\x7f",
    b"\t",
    b" ",
    b"\xff",
]

# Where a byte is injected in a small request: before the index of each marker.
PLACES = {
    "method": b"GET",
    "after the method": b" /path",
    "target": b"path",
    "before the version": b" HTTP",
    "version": b"/1.1",
    "end of the request line": b"\r\nHost",
    "header name": b"ost:",
    "before the colon": b": example",
    "after the colon": b" example",
    "value": b"ample",
    "end of a value": b"\r\nX-A",
    "last header end": b"\r\n\r\n",
}


def _families() -> Iterator[Case]:
    for value in CONTENT_LENGTHS:
        yield Case(f"Content-Length {value!r}", post(b"Content-Length: " + value, body=NEXT_BODY))
    for first, second in [(b"5", b"5"), (b"5", b"6"), (b"5", b"05"), (b"5", b""), (b"0", b"5")]:
        yield Case(
            f"Content-Length {first!r} then {second!r}",
            post(b"Content-Length: " + first, b"Content-Length: " + second, body=NEXT_BODY),
        )
    for value in TRANSFER_ENCODINGS:
        yield Case(
            f"Transfer-Encoding {value!r}", post(b"Transfer-Encoding: " + value, body=HELLO + NEXT)
        )
    for version in (b"HTTP/1.1", b"HTTP/1.0"):
        for fields in [
            (b"Content-Length: 5", CHUNKED),
            (CHUNKED, b"Content-Length: 5"),
            (b"Content-Length: 0", CHUNKED),
            (b"Content-Length: 5, 5", CHUNKED),
        ]:
            yield Case(
                f"{version.decode()} {fields!r}", post(*fields, body=HELLO + NEXT, version=version)
            )
    for size in CHUNK_SIZES:
        yield Case(
            f"chunk size {size!r}", post(CHUNKED, body=size + b"\r\nhello\r\n0\r\n\r\n" + NEXT)
        )
    for end in CHUNK_ENDS:
        yield Case(
            f"chunk data end {end!r}", post(CHUNKED, body=b"5\r\nhello" + end + b"0\r\n\r\n" + NEXT)
        )
    for version in VERSIONS:
        yield Case(f"version {version!r}", request(version=version) + NEXT)
    for method in (b"GET", b"OPTIONS"):
        for target in TARGETS:
            yield Case(f"{method.decode()} target {target!r}", request(method, target) + NEXT)
    for method in METHODS:
        yield Case(f"method {method!r}", request(method=method) + NEXT)
    base = request(target=b"/path", fields=(HOST, b"X-A: b"))
    for place, marker in PLACES.items():
        at = base.index(marker)
        for byte in INJECTED:
            yield Case(f"{byte!r} injected at the {place}", base[:at] + byte + base[at:] + NEXT)


def _unique(cases: list[Case]) -> list[Case]:
    seen: set[str] = set()
    for case in cases:
        assert case.name not in seen, f"two corpus cases are named {case.name!r}"
        seen.add(case.name)
    return cases


CORPUS = _unique(HAND + list(_families()))
"""Every case of the corpus, each named uniquely."""


# -- generated requests -----------------------------------------------------------------------

_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(_TCHARS, min_size=1, max_size=12).map(str.encode)
# VCHAR without "#" for targets; field-vchar (VCHAR, obs-text) with inner SP/HTAB for values.
_target_chars = st.sampled_from([bytes([b]) for b in range(0x21, 0x7F) if b != 0x23])
_value_chars = st.sampled_from([bytes([b]) for b in [*range(0x21, 0x7F), *range(0x80, 0x100)]])
_FRAMING_NAMES = {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect"}
_SIZE_FORMATS = [b"%x", b"%X", b"%03x"]


@st.composite
def values(draw: st.DrawFn) -> bytes:
    """A header value: field-vchars, SP and HTAB only inside, maybe empty."""
    words = draw(st.lists(st.lists(_value_chars, min_size=1, max_size=6).map(b"".join), max_size=4))
    separators = [draw(st.sampled_from([b" ", b"\t", b"  ", b" \t"])) for _ in words]
    return b"".join(sep + word for sep, word in zip(separators, words, strict=True)).lstrip(b" \t")


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    """(bytes, parts) of a request valid for h11 and lifecycle alike, maybe with a body.

    ``parts`` holds what both must see: method, target, headers (lowercased
    names; Content-Length and Transfer-Encoding left out), body, trailers.
    """
    method = draw(tokens.filter(lambda m: m != b"CONNECT"))
    path = b"/" + b"".join(draw(st.lists(_target_chars, max_size=20)))
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    names = st.one_of(tokens, st.sampled_from([b"Accept", b"Cookie", b"X-Forwarded-For"]))
    fields = [
        (name, draw(values()))
        for name in draw(st.lists(names, max_size=8))
        if name.lower() not in _FRAMING_NAMES
    ]
    if version == b"1.1" or draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", b"example.com"))
    framing = draw(
        st.sampled_from(["none", "length", "chunked"] if version == b"1.1" else ["none", "length"])
    )
    chunks = draw(st.lists(st.binary(min_size=1, max_size=30), max_size=4))
    body = b"".join(chunks)
    trailers: list[tuple[bytes, bytes]] = []
    framing_fields: list[tuple[bytes, bytes]] = []
    if framing == "length":
        framing_fields.append((b"Content-Length", b"%d" % len(body)))
        encoded = body
    elif framing == "chunked":
        framing_fields.append(
            (b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked"])))
        )
        encoded = b"".join(
            b"%s\r\n%s\r\n" % (draw(st.sampled_from(_SIZE_FORMATS)) % len(c), c) for c in chunks
        )
        trailers = [(name, draw(values())) for name in draw(st.lists(tokens, max_size=2))]
        trailers = [(n, v) for n, v in trailers if n.lower() not in _FRAMING_NAMES]
        encoded += b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"
    else:
        body, encoded = b"", b""
    all_fields = fields + framing_fields
    head = b"%s %s HTTP/%s\r\n" % (method, path, version)
    head += b"".join(
        n + b":" + draw(st.sampled_from([b"", b" ", b"\t"])) + v + b"\r\n" for n, v in all_fields
    )
    parts: dict[str, object] = {
        "method": method,
        "target": path,
        "headers": [(n.lower(), v) for n, v in fields],
        "body": body,
        "trailers": [(n.lower(), v) for n, v in trailers],
    }
    return head + b"\r\n" + encoded, parts


_MUTATION_BYTES = [
    b"\x00", b"\r", b"\n", b"\r\n", b"\t", b" ", b":", b",", b";", b"0", b"5", b"x", b"+", b"-",
    b'"', b"\x0b", b"\x0c", b"\x7f", b"\xff", b"/", b"#", b"?", b"@",
]  # fmt: skip
_EXTRA_FIELDS = [
    b"Content-Length: 5", b"Content-Length: 0", b"Content-Length: 5, 5", b"Content-Length: 6",
    CHUNKED, b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked, identity", HOST,
    b"Connection: close", b"Connection: keep-alive", b"Upgrade: websocket", b"Expect: 100-continue",
]  # fmt: skip


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """A valid request (maybe followed by `NEXT`) with one to four random mutations.

    Mutations: insert a byte from a list of troublemakers, delete a byte,
    duplicate a line, flip the case of a stretch, add a framing-related
    header, cut the bytes short.
    """
    data, _ = draw(valid_requests())
    if draw(st.booleans()):
        data += NEXT
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "duplicate", "case", "field", "cut"]))
        at = draw(st.integers(0, len(data)))
        if kind == "insert":
            data = data[:at] + draw(st.sampled_from(_MUTATION_BYTES)) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + 1 :]
        elif kind == "duplicate":
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at) + 1 or len(data)
            data = data[:end] + data[start:end] + data[end:]
        elif kind == "case":
            stop = at + draw(st.integers(1, 12))
            data = data[:at] + data[at:stop].swapcase() + data[stop:]
        elif kind == "field":
            line_end = data.find(b"\r\n") + 2
            data = (
                data[:line_end] + draw(st.sampled_from(_EXTRA_FIELDS)) + b"\r\n" + data[line_end:]
            )
        else:
            data = data[:at]
    return data
