"""A closed-loop HTTP/1.1 load generator that counts every attempt.

`run_load` starts ``clients`` threads. Each holds one keep-alive connection
(``TCP_NODELAY`` on), sends a request, reads the whole response, and sends the
next one as soon as it has it: a *closed loop*, so the load follows the
server's speed the way a pool of busy callers does.

Every attempt counts and nothing is retried. A request that fails (refused,
reset, closed with no or half a response, timed out, answered 5xx) is counted
once as failed, by kind, and the client opens a *new* connection for its
*next* request. The failed request is never sent again: a retry would turn
exactly the losses a graceful shutdown must prevent (the race between a
client's next request on a keep-alive connection and the server closing it)
into invisible latency. Real callers cannot always retry either: a POST that
may have been applied is not safe to send twice. A zero from this generator
therefore means that no caller saw an error.

Failure kinds:

* ``refused`` -- the connection was refused (nothing listening).
* ``reset`` -- ECONNRESET / EPIPE / ECONNABORTED while sending or reading.
* ``eof`` -- the connection was closed with no response or part of one.
* ``timeout`` -- no progress for ``request_timeout`` seconds.
* ``http_5xx`` -- a 5xx status (e.g. haproxy's 503 when no server is up, or
  502 when a server closed the connection); the codes are in
  `LoadResult.statuses`.
* ``other`` -- anything else, including unexpected non-2xx statuses.

A response carrying ``Connection: close`` is honoured: the client closes the
connection after reading it and reconnects before its next request. That
reconnect is not a failure.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable

import attrs

FAILURE_KINDS = ("refused", "reset", "eof", "timeout", "http_5xx", "other")
"""Every kind of failure `run_load` counts, in report order."""


@attrs.frozen
class LoadResult:
    """What `run_load` measured.

    Invariant: ``sent == ok + failed`` and ``failed == sum(failures.values())``.

    Attributes:
        sent: Requests attempted (including those whose connect failed).
        ok: Requests answered with a 2xx status.
        failed: Requests that failed, of any kind.
        failures: Failed requests by kind (only kinds that occurred).
        statuses: Non-2xx status codes received, with counts.
        duration: Seconds from the start of the first client to the end of the last.
        latencies: Seconds per successful request, in completion order per client.
        connections: TCP connections opened (successful connects).
        failure_times: ``(seconds since start, kind)`` of every failure, sorted.
        started: `time.monotonic` value at the start, to align with other timelines.
    """

    sent: int
    ok: int
    failed: int
    failures: dict[str, int]
    statuses: dict[int, int]
    duration: float
    latencies: tuple[float, ...]
    connections: int
    failure_times: tuple[tuple[float, str], ...]
    started: float

    def percentile(self, q: float) -> float:
        """Return the ``q``-quantile (0..1, nearest rank) of successful latencies, in seconds.

        Returns ``nan`` when no request succeeded.
        """
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
        return ordered[index]

    @property
    def p50(self) -> float:
        """Median latency of successful requests, in seconds."""
        return self.percentile(0.50)

    @property
    def p99(self) -> float:
        """99th-percentile latency of successful requests, in seconds."""
        return self.percentile(0.99)

    def describe_failures(self) -> str:
        """Return the failure kinds as ``"http_5xx=12 (503x12) eof=3"``, or ``"-"``."""
        parts: list[str] = []
        for kind in FAILURE_KINDS:
            count = self.failures.get(kind, 0)
            if not count:
                continue
            part = f"{kind}={count}"
            if kind == "http_5xx":
                codes = " ".join(
                    f"{code}x{n}" for code, n in sorted(self.statuses.items()) if code >= 500
                )
                part += f" ({codes})"
            parts.append(part)
        return " ".join(parts) or "-"

    @staticmethod
    def header() -> str:
        """Return the column header matching `format_row`."""
        return (
            f"{'label':<24} {'sent':>7} {'ok':>7} {'failed':>6} {'rps':>6} "
            f"{'p50 ms':>7} {'p99 ms':>7}  failures"
        )

    def format_row(self, label: str = "") -> str:
        """Return one table row: counts, throughput, latency percentiles, failure kinds."""
        rps = self.sent / self.duration if self.duration > 0 else 0.0
        return (
            f"{label:<24} {self.sent:>7} {self.ok:>7} {self.failed:>6} {rps:>6.0f} "
            f"{self.p50 * 1000:>7.1f} {self.p99 * 1000:>7.1f}  {self.describe_failures()}"
        )


def format_table(rows: Iterable[tuple[str, LoadResult]]) -> str:
    """Return a header and one `LoadResult.format_row` line per ``(label, result)``."""
    return "\n".join([LoadResult.header(), *(r.format_row(label) for label, r in rows)])


class _Tickets:
    """Hands out at most ``limit`` request tickets across client threads."""

    def __init__(self, limit: int) -> None:
        self._left = limit
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


@attrs.define
class _ClientStats:
    """One client's counts; only its own thread writes them until it is joined."""

    sent: int = 0
    ok: int = 0
    failures: Counter[str] = attrs.field(factory=Counter)
    statuses: Counter[int] = attrs.field(factory=Counter)
    latencies: list[float] = attrs.field(factory=list)
    connections: int = 0
    failure_times: list[tuple[float, str]] = attrs.field(factory=list)


def _classify(exc: BaseException) -> str:
    # Order matters: RemoteDisconnected subclasses ConnectionResetError, and
    # means the peer closed cleanly before sending a status line.
    if isinstance(exc, http.client.RemoteDisconnected | http.client.IncompleteRead):
        return "eof"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "other"


@attrs.frozen
class _Plan:
    """What every client of one run shares."""

    host: str
    port: int
    path: str
    request_timeout: float
    started: float
    deadline: float
    stop: threading.Event
    tickets: _Tickets
    refused_backoff: float = 0.0


def _client(plan: _Plan, stats: _ClientStats) -> None:
    started = plan.started
    conn: http.client.HTTPConnection | None = None
    try:
        while (
            not plan.stop.is_set() and time.monotonic() < plan.deadline and plan.tickets.take()
        ):
            begin = time.monotonic()
            stats.sent += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(
                        plan.host, plan.port, timeout=plan.request_timeout
                    )
                    conn.connect()
                    assert conn.sock is not None
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    stats.connections += 1
                conn.request("GET", plan.path)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                kind = _classify(exc)
                stats.failures[kind] += 1
                stats.failure_times.append((time.monotonic() - started, kind))
                if conn is not None:
                    conn.close()
                conn = None
                if kind == "refused" and plan.refused_backoff > 0:
                    # What a real client does before it reconnects; bounded
                    # by the stop event, so the run still ends on time.
                    plan.stop.wait(plan.refused_backoff)
                continue
            status = response.status
            if 200 <= status < 300:
                stats.ok += 1
                stats.latencies.append(time.monotonic() - begin)
            else:
                kind = "http_5xx" if status >= 500 else "other"
                stats.failures[kind] += 1
                stats.statuses[status] += 1
                stats.failure_times.append((time.monotonic() - started, kind))
            if response.will_close:
                # Connection: close (or HTTP/1.0): the server is done with this
                # connection; the next request goes on a new one.
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()


def run_load(
    host: str,
    port: int,
    *,
    clients: int = 16,
    path: str = "/work?ms=50",
    duration: float = 10.0,
    max_requests: int = 1_000_000,
    stop_event: threading.Event | None = None,
    request_timeout: float = 5.0,
    refused_backoff: float = 0.0,
) -> LoadResult:
    """Run closed-loop load against ``http://host:port{path}`` and count every attempt.

    Blocks until ``duration`` seconds have passed, ``max_requests`` requests
    were attempted, or ``stop_event`` is set, whichever comes first; requests
    in flight then finish (each bounded by ``request_timeout``).

    Args:
        host: Address to connect to (the load balancer or a server).
        port: TCP port to connect to.
        clients: Number of client threads, each with its own keep-alive connection.
        path: Request target of every ``GET``.
        duration: Upper bound on the time new requests are started, in seconds.
        max_requests: Upper bound on the number of attempts over all clients.
        stop_event: When set, clients start no new request.
        request_timeout: Socket timeout for connect, send and each read, in seconds.
        refused_backoff: Seconds a client waits after a refused connection
            before its next attempt (0: at once). Talking to one server
            directly, this keeps a closed listener from turning into
            thousands of instant refusals.

    Returns:
        The counts, latencies and failure timeline of the run.

    Raises:
        ValueError: If ``clients`` is not positive or a bound is not positive.
    """
    if clients < 1:
        raise ValueError(f"clients must be at least 1, got {clients}")
    if duration <= 0 or max_requests < 1 or request_timeout <= 0:
        raise ValueError(
            "duration, max_requests and request_timeout must be positive, got "
            f"{duration}, {max_requests}, {request_timeout}"
        )
    all_stats = [_ClientStats() for _ in range(clients)]
    started = time.monotonic()
    deadline = started + duration
    plan = _Plan(
        host=host,
        port=port,
        path=path,
        request_timeout=request_timeout,
        started=started,
        deadline=deadline,
        stop=stop_event if stop_event is not None else threading.Event(),
        tickets=_Tickets(max_requests),
        refused_backoff=refused_backoff,
    )
    threads = [
        threading.Thread(
            target=_client,
            args=(plan, stats),
            name=f"loadgen-{i}",
            # A client stuck past its bound must not keep the process alive.
            daemon=True,
        )
        for i, stats in enumerate(all_stats)
    ]
    for thread in threads:
        thread.start()
    # Each client stops starting requests at the deadline; the one in flight
    # may take a connect, a send and a read timeout, plus scheduling slack.
    join_by = deadline + 3 * request_timeout + 1.0
    for thread in threads:
        thread.join(timeout=max(0.0, join_by - time.monotonic()))
    ended = time.monotonic()
    failures: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for stats in all_stats:
        failures.update(stats.failures)
        statuses.update(stats.statuses)
    sent = sum(s.sent for s in all_stats)
    ok = sum(s.ok for s in all_stats)
    failed = sum(failures.values())
    # A client still running past its bound has an attempt in flight: count it
    # as a timeout so that the invariant sent == ok + failed holds.
    if sent > ok + failed:
        failures["timeout"] += sent - ok - failed
        failed = sent - ok
    return LoadResult(
        sent=sent,
        ok=ok,
        failed=failed,
        failures=dict(failures),
        statuses=dict(statuses),
        duration=ended - started,
        latencies=tuple(lat for s in all_stats for lat in s.latencies),
        connections=sum(s.connections for s in all_stats),
        failure_times=tuple(sorted(t for s in all_stats for t in s.failure_times)),
        started=started,
    )
