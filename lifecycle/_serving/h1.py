"""Strict HTTP/1.1 request framing (RFC 9112), sans-I/O: heads, bodies, response checks.

A server that frames a request differently from the proxy in front of it
lets a client smuggle a second request past the proxy's rules. This module
decides, from the bytes alone, where a request's head ends, what it says,
how its body is delimited and where the next request begins, and it refuses
every shape on which two careful implementations could disagree. It does no
I/O, keeps no clock and holds no state beyond one body decoder::

    end = find_head_end(buffer, limits=limits)          # -1: not complete yet
    head = parse_head(bytes(buffer[:end]), limits=limits)
    decoder = head.framing.decoder(limits)              # LengthDecoder or ChunkedDecoder
    body = decoder.feed(bytes(buffer[end:]))            # ... until decoder.done
    rest = decoder.unused                               # the next request starts here

Every refusal is an `HTTPError` carrying the status to answer and a fixed,
short reason; after one the server answers (with an ``HTTP/1.1`` status
line) and closes the connection, since where the next request would start is
unknown. What is refused:

=====  ===============================================================
400    request line not exactly ``method SP target SP HTTP/1.x``, a
       method that is no token, a target with a byte outside VCHAR or a
       fragment, ``*`` for another method than OPTIONS, a target that is
       neither ``/path`` nor ``http(s)://authority/path``; an empty line
       before the request line; NUL, any other control character but
       HTAB, a bare CR or a bare LF in the head; obs-fold; a header line
       without a colon, with an empty name, a name that is no token or
       whitespace before the colon; a missing (HTTP/1.1), repeated or
       malformed ``Host``; a ``Content-Length`` that is not ASCII digits
       or whose values differ; ``Content-Length`` with
       ``Transfer-Encoding``; ``Transfer-Encoding`` in HTTP/1.0 or with
       ``chunked`` not last or twice; a malformed chunk (size not 1-16 hex
       digits, bad extension, no CRLF after size or data); a framing
       field (``Content-Length``, ``Transfer-Encoding``) in the trailers
413    a body (declared or chunked so far) over `Limits.max_body` or 2**63-1
414    a request line over `Limits.max_request_line`
431    a head over `Limits.max_head` or with more than `Limits.max_headers`
       field lines (trailers: the same two bounds)
501    ``CONNECT`` (no tunnels), a transfer coding other than ``chunked``
505    a well-formed version other than HTTP/1.0 and HTTP/1.1
       (``HTTP/1.10``, ``HTTP/2.0``, ``HTTP/0.9``)
=====  ===============================================================

Where RFC 9112 leaves the recipient a choice, the stricter one is taken:

* A bare LF as a line terminator (§2.2: a recipient MAY accept it) is
  refused: a front end that does not split on it would pass
  ``X: a<LF>Transfer-Encoding: chunked`` as one header that this parser
  would read as two. Every HTTP client and proxy in use ends lines with CRLF.
* An empty line before the request line (§2.2: SHOULD be ignored) is
  refused, as h11 (uvicorn's parser) does; no client in use sends one.
* obs-fold (§5.2: reject or replace with SP) is refused.
* ``Content-Length`` with ``Transfer-Encoding`` (§6.1: reject, or let
  Transfer-Encoding win and close after the response) is refused, as
  gunicorn does. (h11 lets Transfer-Encoding win and keeps the connection.)
* ``Transfer-Encoding`` in an HTTP/1.0 request (§6.1: the framing is
  faulty) is refused.
* A transfer coding other than ``chunked`` is a 501 (§6.1: SHOULD), also
  when it is alone (``gzip``): its length is unknown, so the connection
  closes as well; ``chunked`` not last or applied twice is a 400 (§6.3).
* ``Content-Length`` values are compared as written: ``5, 5`` is 5, while
  ``5`` with ``05`` is a conflict.
* Control characters other than HTAB are refused in values too (RFC 9110
  §5.5 field-vchar excludes them), and a fragment (``#``) in the target.
* Whitespace between a chunk size and its first ``;`` (RFC 9112 §7.1.1
  BWS) is refused, as h11 and gunicorn do, and so is whitespace after a
  size without extensions.
* ``CONNECT`` is a 501: the servers tunnel nothing.
* ``Upgrade`` is ignored (RFC 9110 §7.8 allows it): the request is served
  as an ordinary one.
* HTTP/1.0 keep-alive is honoured when the request says
  ``Connection: keep-alive``.

Added in 0.1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar, Final, NoReturn

import attrs

from .._core.errors import LifecycleError

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_CHUNK_LINE",
    "MAX_LENGTH",
    "ChunkedDecoder",
    "Framing",
    "HTTPError",
    "Head",
    "LengthDecoder",
    "Limits",
    "check_response_head",
    "find_head_end",
    "parse_head",
]

MAX_LENGTH: Final = 2**63 - 1
"""The largest body length accepted, whatever `Limits.max_body` says (RFC 9112 §6.2
asks recipients to guard against integer overflow)."""

MAX_CHUNK_LINE: Final = 4096
"""Bytes a chunk-size line may take, extensions and CRLF included."""

# -- the grammar (RFC 9110 §5.6.2, RFC 9112 §3, §5, §7.1) ------------------------------------

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Bytes a head may hold once its CRLF pairs are removed: VCHAR, obs-text, SP and HTAB.
_HEAD_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
_REQUEST_LINE = re.compile(rb"([%s]+) ([\x21-\x7e]+) HTTP/1\.([01])" % _TCHAR)
_ANY_VERSION = re.compile(rb"HTTP/[0-9]+\.[0-9]+")
_VCHARS = re.compile(rb"[\x21-\x7e]+")
_DIGITS = re.compile(rb"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
# uri-host [ ":" port ] (RFC 3986 §3.2.2): an IP literal or a reg-name; no userinfo.
_HOST = re.compile(
    rb"(?:\[[0-9A-Za-z:._~!$&'()*+,;=\-]+\]|[0-9A-Za-z._~%!$&'()*+,;=\-]*)(?::[0-9]*)?"
)
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?]*)(.*)")
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# chunk-size [ chunk-ext ] CRLF, chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ),
# except that the first ";" must follow the size at once (h11 and gunicorn refuse BWS there).
_CHUNK_EXT = rb"[ \t]*[%s]+(?:[ \t]*=[ \t]*(?:[%s]+|%s))?" % (_TCHAR, _TCHAR, _QUOTED)
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:;%s(?:[ \t]*;%s)*)?)\r\n" % (_CHUNK_EXT, _CHUNK_EXT)
)
_SPECIAL: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"connection", b"expect"}
)
_FRAMING_FIELDS: Final = frozenset({b"content-length", b"transfer-encoding"})
_V10: Final = (1, 0)
_V11: Final = (1, 1)


class HTTPError(LifecycleError, ValueError):
    """A request (or a response head) refused: the status to answer, and why.

    After a refused request the server sends ``status`` with an ``HTTP/1.1``
    status line and closes the connection: where the next request would
    start is unknown. `check_response_head` raises it with status 500.

    Attributes:
        status: 400, 413, 414, 431, 501 or 505 for a request; 500 for a response.
        reason: a fixed phrase of this module, never bytes of the request:
            safe to write into the response and into a log line.
        detail: for the log: what was wrong, with the offending bytes
            escaped and cut short; empty when the reason says it all.

    Example::

        try:
            head = parse_head(data, limits=limits)
        except HTTPError as exc:
            send_error(exc.status, exc.reason)       # then close the connection
            log.info("request refused", status=exc.status, reason=exc.reason)

    Added in 0.1.
    """

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(status, reason, detail)
        self.status = status
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.status} {self.reason}" + (f" ({self.detail})" if self.detail else "")


def _shown(data: bytes | str) -> str:
    """``data`` escaped for a log line (repr), at most about 60 characters of it."""
    return repr(data[:60]) + ("..." if len(data) > 60 else "")


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"Limits.{attribute.name} must be a positive int, got {value!r}")


def _body_bound(instance: object, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"Limits.max_body must be None (no limit) or an int >= 0, got {value!r}")


@attrs.frozen
class Limits:
    """The bounds each request is held to; past one it is refused and the connection closed.

    The defaults, each a knob of the servers:

    * ``max_head = 65536`` (64 KiB): bytes of the head, request line through
      the empty line that ends it; past it, 431. Four times the 16 KiB of
      h11 and Node.js, room for large cookie jars and tracing headers; a
      bigger head is an attempt to exhaust memory.
    * ``max_headers = 100``: field lines in the head (and in the trailers);
      past it, 431. Apache's ``LimitRequestFields`` and gunicorn's
      ``limit_request_fields``; a browser sends 10 to 20.
    * ``max_request_line = 8192`` (8 KiB): bytes of the request line without
      its CRLF; past it, 414. Apache's ``LimitRequestLine`` (8190) and
      nginx's 8 KiB header buffer: a longer URL fails at most proxies already.
    * ``max_body = None``: no limit on a body's size (413 past a limit).
      The servers read bodies in bounded pieces, so a large body costs the
      app's time, not the server's memory. Set it when the app reads whole
      bodies into memory, or to what the proxy in front allows.

    Example::

        limits = Limits(max_body=10 * 1024 * 1024)   # refuse bodies over 10 MiB

    Added in 0.1.
    """

    max_head: int = attrs.field(default=64 * 1024, validator=_positive)
    max_headers: int = attrs.field(default=100, validator=_positive)
    max_request_line: int = attrs.field(default=8 * 1024, validator=_positive)
    max_body: int | None = attrs.field(default=None, validator=_body_bound)


DEFAULT_LIMITS: Final = Limits()
"""`Limits` with every default."""


@attrs.frozen
class Framing:
    """How a request's body is delimited (RFC 9112 §6.3); one of three kinds.

    * ``Framing.NONE``: neither ``Content-Length`` nor ``Transfer-Encoding``:
      the request has no body (a request body is never delimited by the close);
    * ``Framing.LENGTH(n)``: ``Content-Length: n``; ``length`` is ``n``;
    * ``Framing.CHUNKED``: ``Transfer-Encoding: chunked``; ``chunked`` is True.

    ``NONE`` and ``CHUNKED`` are singletons (compare with ``is`` or ``==``).

    Example::

        if head.framing is Framing.CHUNKED:
            environ.pop("CONTENT_LENGTH", None)
        decoder = head.framing.decoder(limits)

    Added in 0.1.
    """

    length: int | None = None
    chunked: bool = False

    NONE: ClassVar[Framing]
    CHUNKED: ClassVar[Framing]

    @classmethod
    def LENGTH(cls, n: int) -> Framing:  # noqa: N802 - the third variant beside NONE and CHUNKED
        """The framing of a body of ``n`` bytes (``Content-Length: n``)."""
        return cls(n)

    @property
    def body_length(self) -> int | None:
        """Bytes of the body: 0 without a body, ``n`` for ``LENGTH(n)``, None when chunked."""
        if self.chunked:
            return None
        return 0 if self.length is None else self.length

    def decoder(self, limits: Limits = DEFAULT_LIMITS) -> LengthDecoder | ChunkedDecoder:
        """A fresh decoder of a body framed this way."""
        if self.chunked:
            return ChunkedDecoder(limits)
        return LengthDecoder(self.length or 0)


Framing.NONE = Framing()
Framing.CHUNKED = Framing(chunked=True)


@attrs.define(eq=True)
class Head:
    r"""A request head that passed every check; read-only by convention.

    Attributes:
        method: the method, case kept (``b"GET"``).
        target: the request target as sent (``b"/a?b=1"``, ``b"http://h/a"``, ``b"*"``).
        version: ``(1, 0)`` or ``(1, 1)``.
        headers: ``(name, value)`` per field line, in order: the name
            lowercased, the value without surrounding whitespace.
        framing: how the body is delimited (`Framing`).
        keep_alive: whether the client lets the connection carry another
            request after this one: HTTP/1.1 unless ``Connection: close``;
            HTTP/1.0 only with ``Connection: keep-alive``.
        path: the target's path, not percent-decoded: before the ``?`` of an
            origin-form target, the path of an absolute-form one (``b"/"``
            when it has none), ``b"*"`` for ``OPTIONS *``. A path that holds
            ``://`` (``/public/http://x/admin``) stays as it is.
        query: what follows the first ``?`` (``b""`` without one).
        expect_continue: HTTP/1.1 with ``Expect: 100-continue``: answer
            ``100 Continue`` before reading the body.

    Example::

        head = parse_head(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (head.path, head.query, head.get(b"host")) == (b"/a", b"b=1", b"x")

    Added in 0.1.
    """

    method: bytes
    target: bytes
    version: tuple[int, int]
    headers: list[tuple[bytes, bytes]]
    framing: Framing
    keep_alive: bool
    path: bytes
    query: bytes
    expect_continue: bool = False

    @property
    def close_after(self) -> bool:
        """Whether the connection must close after the response (the client said so).

        A framing this module accepts never requires the close by itself:
        every ambiguous one is refused (`HTTPError`), after which the
        connection always closes.
        """
        return not self.keep_alive

    def get(self, name: bytes) -> bytes | None:
        """The value of field ``name`` (lowercase), its lines joined by ``", "``, or None."""
        values = [value for key, value in self.headers if key == name]
        if not values:
            return None
        return values[0] if len(values) == 1 else b", ".join(values)

    def get_all(self, name: bytes) -> list[bytes]:
        """The values of every line of field ``name`` (lowercase), in order."""
        return [value for key, value in self.headers if key == name]


# -- the head ---------------------------------------------------------------------------------


def find_head_end(
    buffer: bytes | bytearray, start: int = 0, *, limits: Limits = DEFAULT_LIMITS
) -> int:
    """Where the head at the start of ``buffer`` ends (past its empty line), or -1.

    Call it as bytes arrive; pass ``start=len(buffer)`` of the previous call
    so that a head arriving byte by byte is scanned once, not once per byte.
    A head ending in a bare-LF empty line is delimited too, so that
    `parse_head` refuses it at once instead of waiting for a CRLF.

    Raises:
        HTTPError: 414 when the request line is already longer than
            ``limits.max_request_line``; 431 when the head is, or would be,
            longer than ``limits.max_head``.

    Example::

        end = find_head_end(buffer, searched, limits=limits)
        if end < 0:
            searched = len(buffer)                   # read more, then call again
        else:
            head = parse_head(bytes(buffer[:end]), limits=limits)

    Added in 0.1.
    """
    if buffer[:1] == b"\n":
        return 1
    if buffer[:2] == b"\r\n":
        return 2
    begin = max(start - 2, 0)
    crlf = buffer.find(b"\n\r\n", begin)
    lf = buffer.find(b"\n\n", begin, None if crlf < 0 else crlf + 1)
    end = lf + 2 if lf >= 0 else (crlf + 3 if crlf >= 0 else -1)
    if end > limits.max_head or (end < 0 and len(buffer) >= limits.max_head):
        _check_request_line_length(buffer, limits)
        raise HTTPError(431, "request head too large")
    if end < 0:
        _check_request_line_length(buffer, limits)
    return end


def _check_request_line_length(data: bytes | bytearray, limits: Limits) -> None:
    """Refuse (414) a request line already longer than ``limits.max_request_line``."""
    line_limit = limits.max_request_line + 2  # the line, then its CRLF
    if len(data) >= line_limit and data.find(b"\n", 0, line_limit) < 0:
        raise HTTPError(414, "request line too long")


def parse_head(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Head:
    r"""Parse and check one request head: request line, field lines, the empty line.

    ``data`` is the head exactly, as `find_head_end` delimits it. Beside the
    syntax (this module's docstring lists what is refused) it checks the
    framing of the body and ``Host``.

    Raises:
        HTTPError: the request is refused; answer ``status`` and close.

    Example::

        head = parse_head(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        assert head.framing == Framing.LENGTH(5)

    Added in 0.1.
    """
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        raise HTTPError(400, "empty line before the request line")
    _check_request_line_length(data, limits)
    if len(data) > limits.max_head:
        raise HTTPError(431, "request head too large")
    _check_bytes(data, "request head")
    if data[-4:] != b"\r\n\r\n":
        raise HTTPError(400, "request head does not end with an empty line")
    line_end = data.find(b"\r\n")
    line = data[:line_end]
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        _refuse_request_line(line)
    method, target, minor = match.groups()
    version = _V11 if minor == b"1" else _V10
    headers, found = _fields(data[line_end + 2 : -2], limits, "request head", _SPECIAL)
    framing = _framing(found, version, limits)
    _check_host(found.get(b"host"), version)
    path, query = _target(method, target)
    tokens = _tokens(found.get(b"connection"))
    if version == _V11:
        keep_alive = b"close" not in tokens
        expect_continue = b"100-continue" in _tokens(found.get(b"expect"))
    else:
        keep_alive = b"keep-alive" in tokens and b"close" not in tokens
        expect_continue = False  # RFC 9110 §10.1.1: ignored in HTTP/1.0
    return Head(method, target, version, headers, framing, keep_alive, path, query, expect_continue)


def _check_bytes(data: bytes, where: str) -> None:
    """Refuse NUL, control characters but HTAB, bare CR and bare LF in ``data``."""
    if not data.replace(b"\r\n", b"").translate(None, _HEAD_BYTES):
        return
    if b"\0" in data:
        raise HTTPError(400, f"NUL in the {where}")
    stripped = data.replace(b"\r\n", b"")
    if b"\r" in stripped:
        raise HTTPError(400, f"bare CR in the {where}")
    if b"\n" in stripped:
        raise HTTPError(400, f"bare LF in the {where} (lines end with CRLF)")
    raise HTTPError(400, f"control character in the {where}")


def _refuse_request_line(line: bytes) -> NoReturn:
    """Raise the `HTTPError` that says what is wrong with a request line that failed."""
    parts = line.split(b" ")
    if len(parts) == 2 and all(parts) and not parts[1].startswith(b"HTTP/"):
        raise HTTPError(400, "request line without an HTTP version (HTTP/0.9 is not served)")
    if len(parts) != 3 or not all(parts):
        raise HTTPError(400, "malformed request line (method SP target SP version)", _shown(line))
    method, target, version = parts
    if method.translate(None, _TOKEN_BYTES):
        raise HTTPError(400, "method is not a token", _shown(method))
    if _VCHARS.fullmatch(target) is None:
        raise HTTPError(400, "request target holds a byte outside VCHAR", _shown(target))
    if _ANY_VERSION.fullmatch(version) is not None:
        raise HTTPError(505, "HTTP version not supported (HTTP/1.0 and HTTP/1.1 are)")
    raise HTTPError(400, "malformed HTTP version", _shown(version))


def _fields(
    block: bytes, limits: Limits, where: str, special: frozenset[bytes]
) -> tuple[list[tuple[bytes, bytes]], dict[bytes, list[bytes]]]:
    """The field lines of ``block`` as (lowercased name, value), and the ``special`` ones by name.

    Each line of ``block`` ends in CRLF, and ``block`` has passed `_check_bytes`:
    every CR and LF in it is a line's CRLF.
    """
    lines = block[:-2].split(b"\r\n") if block else []
    if len(lines) > limits.max_headers:
        raise HTTPError(431, f"too many header lines in the {where}")
    fields: list[tuple[bytes, bytes]] = []
    found: dict[bytes, list[bytes]] = {}
    append = fields.append
    for raw in lines:
        name, colon, value = raw.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN_BYTES):
            _refuse_field(raw, where)
        name = name.lower()
        value = value.strip(b" \t")
        append((name, value))
        if name in special:
            found.setdefault(name, []).append(value)
    return fields, found


def _refuse_field(raw: bytes, where: str) -> NoReturn:
    """Raise the `HTTPError` that says what is wrong with a field line that failed."""
    if raw[:1] in (b" ", b"\t"):
        raise HTTPError(400, f"obs-fold (a line starting with whitespace) in the {where}")
    if not raw:
        raise HTTPError(400, f"empty line inside the {where}")
    name, colon, _ = raw.partition(b":")
    if not colon:
        raise HTTPError(400, f"header line without a colon in the {where}", _shown(raw))
    if not name:
        raise HTTPError(400, f"empty header name in the {where}")
    if name.rstrip(b" \t") != name:
        raise HTTPError(400, f"whitespace before the colon of a header in the {where}")
    raise HTTPError(400, f"header name is not a token in the {where}", _shown(name))


def _framing(found: dict[bytes, list[bytes]], version: tuple[int, int], limits: Limits) -> Framing:
    """The body's framing from Content-Length and Transfer-Encoding (RFC 9112 §6.1-6.3)."""
    codings = found.get(b"transfer-encoding")
    lengths = found.get(b"content-length")
    if codings is not None:
        if lengths is not None:
            raise HTTPError(400, "both Content-Length and Transfer-Encoding")
        if version == _V10:
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        _check_codings(codings)
        return Framing.CHUNKED
    if lengths is None:
        return Framing.NONE
    length = _content_length(lengths)
    if limits.max_body is not None and length > limits.max_body:
        raise HTTPError(413, "request body too large")
    return Framing.LENGTH(length)


def _check_codings(values: list[bytes]) -> None:
    """Refuse a Transfer-Encoding (joined over its lines) not exactly ``chunked`` at its end."""
    if len(values) == 1 and values[0].lower() == b"chunked":
        return
    codings = [coding.strip(b" \t").lower() for value in values for coding in value.split(b",")]
    if not all(codings):
        raise HTTPError(400, "empty element in Transfer-Encoding")
    if codings[-1] != b"chunked":
        if b"chunked" in codings:
            raise HTTPError(400, "chunked is not the last transfer coding")
        raise HTTPError(501, "transfer coding not implemented (only chunked is)")
    if codings.count(b"chunked") > 1:
        raise HTTPError(400, "chunked applied more than once")
    raise HTTPError(501, "transfer coding not implemented (only chunked is)")


def _content_length(values: list[bytes]) -> int:
    """The one length all Content-Length values (lines and list elements) state."""
    seen: bytes | None = None
    for value in values:
        for element in value.split(b","):
            part = element.strip(b" \t")
            if _DIGITS.fullmatch(part) is None:
                raise HTTPError(400, "Content-Length is not a decimal number", _shown(part))
            if seen is None:
                seen = part
            elif part != seen:
                raise HTTPError(400, "conflicting Content-Length values")
    assert seen is not None  # values holds at least one line, split() one element
    digits = seen.lstrip(b"0") or b"0"
    if len(digits) > 19 or int(digits) > MAX_LENGTH:  # 2**63-1 has 19 digits
        raise HTTPError(413, "request body too large")
    return int(digits)


def _check_host(hosts: list[bytes] | None, version: tuple[int, int]) -> None:
    """One valid Host, required in HTTP/1.1 (RFC 9112 §3.2)."""
    if hosts is None:
        if version == _V11:
            raise HTTPError(400, "missing Host header")
        return
    if len(hosts) > 1:
        raise HTTPError(400, "more than one Host header")
    if _HOST.fullmatch(hosts[0]) is None:
        raise HTTPError(400, "invalid Host header", _shown(hosts[0]))


def _target(method: bytes, target: bytes) -> tuple[bytes, bytes]:
    """(path, query) of the target, in the form the method allows (RFC 9112 §3.2)."""
    if method == b"CONNECT":
        raise HTTPError(501, "CONNECT is not supported")
    if b"#" in target:
        raise HTTPError(400, "fragment in the request target")
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return path, query
    if target == b"*":
        if method != b"OPTIONS":
            raise HTTPError(400, "target * is for OPTIONS only")
        return target, b""
    match = _ABSOLUTE.fullmatch(target)
    if (
        match is None
        or match.group(1).lower() not in (b"http", b"https")
        or not match.group(2)
        or _HOST.fullmatch(match.group(2)) is None
    ):
        raise HTTPError(
            400, "request target is neither a path nor an absolute http URI", _shown(target)
        )
    path, _, query = match.group(3).partition(b"?")
    return path or b"/", query


def _tokens(values: list[bytes] | None) -> list[bytes]:
    """The lowercased elements of a comma-separated list field (Connection, Expect)."""
    if values is None:
        return []
    return [element.strip(b" \t").lower() for value in values for element in value.split(b",")]


# -- bodies -----------------------------------------------------------------------------------


class LengthDecoder:
    """The body of a request with ``Content-Length`` (or none): exactly ``length`` bytes.

    The same interface as `ChunkedDecoder`, so that one loop reads either.

    Example::

        decoder = LengthDecoder(5)
        assert decoder.feed(b"helloGET /") == b"hello"
        assert decoder.done and decoder.unused == b"GET /"

    Added in 0.1.
    """

    __slots__ = ("_left", "trailers", "unused")

    def __init__(self, length: int) -> None:
        self._left = length
        self.trailers: list[tuple[bytes, bytes]] = []
        """Always empty: only a chunked body has trailers."""
        self.unused = b""
        """Bytes fed past the body's end: the start of the next request."""

    @property
    def done(self) -> bool:
        """Whether the whole body was fed."""
        return self._left == 0

    @property
    def expected(self) -> int:
        """Bytes of the body still to come (a blocking reader may read that many)."""
        return self._left

    def feed(self, data: bytes) -> bytes:
        """Take received bytes; return those that belong to the body."""
        left = self._left
        if len(data) <= left:
            self._left = left - len(data)
            return data
        self._left = 0
        self.unused += data[left:]
        return data[:left]


_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedDecoder:
    r"""The body of a chunked request (RFC 9112 §7.1), decoded from any split of its bytes.

    Feed it what arrives, in any pieces: it returns the body bytes each
    piece completes, and after the last chunk and the trailers it is
    `done`; what was fed past the end is `unused` (the next request). It
    checks, refusing with `HTTPError`: each size is 1 to 16 hex digits and
    nothing else (400 for ``0x5``, ``+5``, ``1_0``, `` 5``, an empty size),
    extensions are ``;name[=token|"quoted"]`` (the first ``;`` right after
    the size: no whitespace between them) and the line at most
    `MAX_CHUNK_LINE` bytes (400), CRLF follows each size line and each
    chunk's data (400), the trailers follow the head's field rules and
    bounds (400, 431) with no ``Content-Length`` or ``Transfer-Encoding``
    (400), the body stays within ``limits.max_body`` (413, refused as soon
    as a chunk's size says it would not).

    A blocking reader reads `expected` bytes when it is positive and one
    line (``readline``) when it is 0, and so never reads past the body.

    Example::

        decoder = ChunkedDecoder()
        body = decoder.feed(b"5\r\nhel") + decoder.feed(b"lo\r\n0\r\n\r\n")
        assert body == b"hello" and decoder.done

    Added in 0.1.
    """

    __slots__ = (
        "_budget",
        "_left",
        "_limits",
        "_line",
        "_state",
        "_trailer_lines",
        "_trailer_size",
        "received",
        "trailers",
        "unused",
    )

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._budget = MAX_LENGTH if limits.max_body is None else limits.max_body
        self._state = _SIZE
        self._left = 0  # bytes left of the chunk's data (_DATA) or of its CRLF (_DATA_END)
        self._line = bytearray()  # the start of a line whose LF has not arrived
        self._trailer_lines: list[bytes] = []
        self._trailer_size = 0
        self.received = 0
        """Body bytes announced by the chunk sizes so far."""
        self.trailers: list[tuple[bytes, bytes]] = []
        """The trailer fields, (lowercased name, value), once `done`."""
        self.unused = b""
        """Bytes fed past the body's end: the start of the next request."""

    @property
    def done(self) -> bool:
        """Whether the last chunk and the trailers were fed."""
        return self._state == _DONE

    @property
    def expected(self) -> int:
        """Bytes of chunk data (and its CRLF) still to come; 0 while a line is expected."""
        if self._state == _DATA:
            return self._left + 2
        if self._state == _DATA_END:
            return self._left
        return 0

    def feed(self, data: bytes) -> bytes:
        """Take received bytes; return the body bytes they complete (maybe ``b""``).

        Raises:
            HTTPError: the body is malformed (400), its trailers too large
                (431) or the body too large (413); then close the connection.
        """
        if self._state == _DONE:
            self.unused += data
            return b""
        out: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size:
            state = self._state
            if state == _DATA:
                take = min(self._left, size - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state, self._left = _DATA_END, 2
            elif state == _DATA_END:
                want = b"\r\n"[2 - self._left :]
                got = data[pos : pos + len(want)]
                if not want.startswith(got):
                    raise HTTPError(400, "chunk data not followed by CRLF")
                pos += len(got)
                self._left -= len(got)
                if self._left == 0:
                    self._state = _SIZE
            else:
                pos = self._take_line(data, pos)
                if self._state == _DONE:
                    self.unused = data[pos:]
                    break
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _take_line(self, data: bytes, pos: int) -> int:
        """Take the line (or its start) at ``data[pos:]``; return where it ended."""
        newline = data.find(b"\n", pos)
        bound = MAX_CHUNK_LINE if self._state == _SIZE else self._limits.max_head
        if newline < 0:
            self._line += data[pos:]
            if len(self._line) + self._trailer_size > bound:
                self._too_long()
            return len(data)
        if self._line:
            self._line += data[pos : newline + 1]
            line = bytes(self._line)
            self._line.clear()
        else:
            line = data[pos : newline + 1]
        if len(line) + self._trailer_size > bound:
            self._too_long()
        if line[-2:-1] != b"\r":
            raise HTTPError(400, "bare LF in the chunked body (lines end with CRLF)")
        if self._state == _SIZE:
            self._size_line(line)
        else:
            self._trailer_line(line)
        return newline + 1

    def _too_long(self) -> NoReturn:
        if self._state == _SIZE:
            raise HTTPError(400, "chunk size line too long")
        raise HTTPError(431, "trailers too large")

    def _size_line(self, line: bytes) -> None:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            _refuse_chunk_line(line)
        size = int(match.group(1), 16)
        if size == 0:
            self._state = _TRAILER
            return
        if size > self._budget - self.received:
            raise HTTPError(413, "request body too large")
        self.received += size
        self._state, self._left = _DATA, size

    def _trailer_line(self, line: bytes) -> None:
        if line != b"\r\n":
            self._trailer_lines.append(line)
            self._trailer_size += len(line)
            return
        block = b"".join(self._trailer_lines)
        _check_bytes(block, "trailers")
        trailers, framing = _fields(block, self._limits, "trailers", _FRAMING_FIELDS)
        if framing:
            raise HTTPError(400, "Content-Length or Transfer-Encoding in the trailers")
        self.trailers = trailers
        self._trailer_lines = []
        self._state = _DONE


def _refuse_chunk_line(line: bytes) -> NoReturn:
    """Raise the `HTTPError` that says what is wrong with a chunk-size line that failed."""
    text = line[:-2]
    digits = _HEX.match(text)
    if digits is None or digits.end() > 16:
        raise HTTPError(400, "chunk size is not 1 to 16 hex digits", _shown(text))
    rest = text[digits.end() :]
    if rest[:1] == b";":
        raise HTTPError(400, "malformed chunk extension", _shown(text))
    if rest[:1] in (b" ", b"\t"):
        raise HTTPError(400, "whitespace after a chunk size")
    raise HTTPError(400, "chunk size is not 1 to 16 hex digits", _shown(text))


# -- responses --------------------------------------------------------------------------------

_STATUS = re.compile(r"[1-5][0-9][0-9](?: [^\r\n\x00]*)?")
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE = re.compile(r"[\r\n\x00]")


def check_response_head(
    status: int | str | bytes, headers: Iterable[tuple[str | bytes, str | bytes]]
) -> None:
    r"""Refuse a response head that would split the response or is malformed (500).

    Call it with what the application produced, before writing anything.
    ``status`` is a code (``200``) or a status as WSGI gives it (``"200 OK"``):
    three ASCII digits from 100 to 599, then optionally a space and a reason
    without CR, LF or NUL. Each header name must be a token, each value free
    of CR, LF and NUL (a value built from a ``%0d%0a`` in a URL would
    otherwise add the attacker's own headers), and both latin-1.

    Raises:
        HTTPError: status 500; ``detail`` names the header and the fix.

    Example::

        check_response_head("302 Found", [("Location", "/next")])   # passes
        check_response_head("200 OK", [("Set-Cookie", "a=1\r\nX: y")])  # HTTPError 500

    Added in 0.1.
    """
    if isinstance(status, int):
        if isinstance(status, bool) or not 100 <= status <= 599:
            _refuse_response(f"status {status!r} is not a code from 100 to 599")
    else:
        text = _text(status, "the status")
        if _STATUS.fullmatch(text) is None:
            _refuse_response(
                f"status {_shown(text)} is not 'NNN reason' "
                "(a code from 100 to 599; a reason without CR, LF or NUL)"
            )
        _latin1(text, "the status")
    for name, value in headers:
        name_text = _text(name, "a header name")
        value_text = _text(value, f"header {name_text!r}")
        if _NAME.fullmatch(name_text) is None:
            _refuse_response(
                f"header name {_shown(name_text)} is not a token "
                "(letters, digits and !#$%&'*+-.^_`|~ only)"
            )
        if _UNSAFE.search(value_text) is not None:
            _refuse_response(
                f"header {name_text!r}: value {_shown(value_text)} holds CR, LF or NUL; "
                "remove them or percent-encode the value"
            )
        _latin1(value_text, f"header {name_text!r}")


def _text(value: object, what: str) -> str:
    """``value`` as a str (bytes are read as latin-1); refuse anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1")
    return _refuse_response(f"{what} must be a str, got {type(value).__name__} {value!r:.60}")


def _latin1(text: str, what: str) -> None:
    if not text.isascii():
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            _refuse_response(f"{what} is not latin-1: {_shown(text)}; encode it (RFC 8187)")


def _refuse_response(detail: str) -> NoReturn:
    raise HTTPError(500, "Internal Server Error", f"invalid response head: {detail}")
