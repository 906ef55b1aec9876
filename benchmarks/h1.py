"""Parse time of a request head: lifecycle's strict parser beside http.server's, in one run.

    python -m benchmarks.h1            # print the table (exit code 0)
    python -m benchmarks.h1 --check    # exit 1 when a target is missed

Two typical heads: a browser-like GET of about 400 bytes (the fields a
browser sends on a navigation) and a small API POST with ``Content-Length``.
For each, per call:

* lifecycle: ``find_head_end`` then ``parse_head`` on the bytes, which is
  what a server runs once a head has arrived;
* http.server: ``BaseHTTPRequestHandler.parse_request`` on a ``BytesIO``
  (the request line read with ``readline`` first), which is what
  ``WSGIServer`` and ``HTTPServer`` run today;
* h11, for information when it is installed: a fresh ``Connection``, then
  ``receive_data`` and ``next_event`` up to the ``Request``.

Each figure is the best of ``REPEAT`` timeit rounds of ``NUMBER`` calls, in
microseconds per call; the three parsers of a row are measured in
alternating rounds, so that drift in the machine hits them alike. Target:
lifecycle takes at most the time of http.server (ratio <= 1.0): the strict
parser may not cost more per request than the one it replaces.

Two more lines, for information: decoding a 1 MiB chunked body arriving in
64 KiB pieces (MB/s), and `check_response_head` on a four-header response.
"""

from __future__ import annotations

import argparse
import io
import sys
import timeit
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from benchmarks.tokens import Row, render
from lifecycle._serving.h1 import ChunkedDecoder, check_response_head, find_head_end, parse_head

NUMBER = 2000
REPEAT = 15
TARGET = 1.0

BROWSER_GET = (
    b"GET /products/shoes?color=blue&size=42 HTTP/1.1\r\n"
    b"Host: shop.example.com\r\n"
    b"Connection: keep-alive\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/126.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
    b"image/webp,*/*;q=0.8\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark\r\n"
    b"\r\n"
)
SMALL_POST = (
    b"POST /api/v1/orders HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 27\r\n"
    b"Authorization: Bearer abc.def.ghi\r\n"
    b"\r\n"
)
HEADS = {"browser GET": BROWSER_GET, "small POST": SMALL_POST}


class _Handler(BaseHTTPRequestHandler):
    """Parses only: errors are recorded, nothing is written."""

    protocol_version = "HTTP/1.1"
    raw_requestline: bytes  # set by handle_one_request in a server; by the benchmark here

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        raise AssertionError(f"http.server refused a benchmark head: {code} {message}")


def lifecycle_parse(data: bytes) -> Callable[[], object]:
    def parse() -> object:
        return parse_head(data[: find_head_end(data)])

    return parse


def stdlib_parse(data: bytes) -> Callable[[], object]:
    new = _Handler.__new__

    def parse() -> object:
        handler = new(_Handler)
        handler.rfile = io.BytesIO(data)
        handler.raw_requestline = handler.rfile.readline(65537)
        return handler.parse_request()

    return parse


def h11_parse(data: bytes) -> Callable[[], object] | None:
    try:
        import h11  # noqa: PLC0415 - optional: measured only when installed
    except ImportError:
        return None

    def parse() -> object:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        return conn.next_event()

    return parse


def best_us(calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Best time per call of each, in µs, measured in alternating rounds."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(REPEAT):
        for name, call in calls.items():
            best[name] = min(best[name], timeit.timeit(call, number=NUMBER) / NUMBER * 1e6)
    return best


def head_rows() -> list[Row]:
    rows = []
    for label, data in HEADS.items():
        calls = {"lifecycle": lifecycle_parse(data), "http.server": stdlib_parse(data)}
        h11 = h11_parse(data)
        if h11 is not None:
            calls["h11"] = h11
        for call in calls.values():
            call()  # each parses the head (http.server raises if it refuses)
        times = best_us(calls)
        ratio = times["lifecycle"] / times["http.server"]
        rows.append(Row(f"{label} ({len(data)} B): lifecycle", f"{times['lifecycle']:.2f} µs"))
        rows.append(Row(f"{label}: http.server parse_request", f"{times['http.server']:.2f} µs"))
        if "h11" in times:
            rows.append(Row(f"{label}: h11 (for information)", f"{times['h11']:.2f} µs"))
        rows.append(
            Row(
                f"{label}: lifecycle / http.server", f"{ratio:.2f}", f"<= {TARGET}", ratio <= TARGET
            )
        )
    return rows


def chunked_row() -> Row:
    piece = 16 * 1024
    body = (b"%x\r\n" % piece + b"x" * piece + b"\r\n") * 64 + b"0\r\n\r\n"
    pieces = [body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024)]

    def decode() -> object:
        decoder = ChunkedDecoder()
        for data in pieces:
            decoder.feed(data)
        assert decoder.done
        return decoder

    seconds = min(timeit.repeat(decode, number=20, repeat=REPEAT)) / 20
    return Row("chunked body, 1 MiB in 64 KiB pieces", f"{1 / seconds:.0f} MiB/s")


def response_row() -> Row:
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", "5120"),
        ("Cache-Control", "no-store"),
        ("Set-Cookie", "session=8f14e45fceea167a5a36dedd4bea2543; Path=/; HttpOnly"),
    ]
    seconds = min(
        timeit.repeat(lambda: check_response_head("200 OK", headers), number=NUMBER, repeat=REPEAT)
    )
    return Row("check_response_head, 4 headers", f"{seconds / NUMBER * 1e6:.2f} µs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.h1", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    print(f"lifecycle h1 parser benchmark, Python {sys.version.split()[0]}, {sys.platform}")
    rows = [*head_rows(), chunked_row(), response_row()]
    print(render(rows))
    failed = [r.name for r in rows if r.ok is False]
    print(f"{len(failed)} target(s) missed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
