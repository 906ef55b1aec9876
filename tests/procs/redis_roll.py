"""A rolling restart of Redis Streams consumer processes under a steady producer, and its ledger.

`roll` runs ``consumers`` processes of tests/procs/redis_consumer.py
against one stream and consumer group on a real redis-server, produces
``messages`` entries at a steady pace, and replaces consumer processes on a
fixed schedule while the producer runs: ``sigterms`` times it starts a
replacement and sends SIGTERM to the oldest consumer at the same moment;
once (``sigkills``) it sends SIGKILL instead, as an OOM kill would. Every
process is started and signalled by its PID, in its own session.

When the producer is done it waits (bounded) until the group has read
everything and nothing is pending, or until nothing changes any more (the
naive loop leaves entries pending for good), then SIGTERMs the rest and
reads the ledger from Redis: which entries were handled (``attempts``), which
took effect and how often (``effects``), what is still pending and where.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import attrs

from tests.procs.redis_consumer import GROUP, keys

ROOT = Path(__file__).resolve().parent.parent.parent
EXIT_BOUND = 15.0
"""Seconds a signalled consumer has to exit before it is SIGKILLed by PID (and reported)."""
READY_BOUND = 15.0
"""Seconds a new consumer has to show up in the group."""


@attrs.define
class Exit:
    """How one signalled consumer ended."""

    name: str
    signal: str
    code: int | None
    seconds: float


@attrs.define
class RollResult:
    """The ledger of one roll (see the module docstring)."""

    mode: str
    produced: int
    sigterms: int
    sigkills: int
    handled: int = 0
    never_handled: int = 0
    lost: int = 0
    pending: int = 0
    unread: int = 0
    effect_once: int = 0
    effect_repeated: int = 0
    effect_missing: int = 0
    handler_reruns: int = 0
    dead_lettered: int = 0
    exits: list[Exit] = attrs.field(factory=list)
    stats: dict[str, int] = attrs.field(factory=dict)
    seconds: float = 0.0
    drained_seconds: float = 0.0
    log_dir: str = ""

    @property
    def sigterm_codes(self) -> list[int | None]:
        """Exit codes of the SIGTERMed consumers, in order."""
        return [e.code for e in self.exits if e.signal == "SIGTERM"]

    @property
    def slowest_sigterm_exit(self) -> float:
        """Seconds from SIGTERM to exit of the slowest one."""
        return max((e.seconds for e in self.exits if e.signal == "SIGTERM"), default=0.0)

    def summary(self) -> str:
        """One line per fact, for assertion messages."""
        return "\n".join(f"{k}: {v}" for k, v in attrs.asdict(self).items())


class _Child:
    def __init__(self, argv: list[str], name: str, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )

    def signal(self, signum: signal.Signals) -> float:
        sent = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return sent

    def wait(self, bound: float) -> int | None:
        try:
            return self.proc.wait(bound)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5.0)
            return None
        finally:
            self._log.close()

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def _wait_connected(client: Any, name: str, child: _Child) -> None:
    """Wait until the child's connection (named after it) shows in ``CLIENT LIST``."""
    deadline = time.monotonic() + READY_BOUND
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"consumer {name} exited early:\n{child.tail()}")
        if any(c.get("name") == name for c in client.client_list()):
            return
        time.sleep(0.02)
    raise RuntimeError(f"consumer {name} did not connect in {READY_BOUND} s:\n{child.tail()}")


@contextlib.contextmanager
def _children() -> Iterator[list[_Child]]:
    started: list[_Child] = []
    try:
        yield started
    finally:
        for child in started:  # only the PIDs this roll started
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(5.0)


def roll(
    client: Any,
    url: str,
    mode: str,
    *,
    messages: int = 5000,
    consumers: int = 3,
    sigterms: int = 5,
    sigkills: int = 1,
    produce_seconds: float = 8.0,
    min_idle: float = 2.0,
    claim_every: float = 0.2,
    drain_bound: float = 40.0,
    log_dir: str | None = None,
) -> RollResult:
    """Run one roll in ``mode`` (``lifecycle``, ``asyncio`` or ``naive``) and return its ledger."""
    began = time.monotonic()
    prefix = f"roll-{mode}-{os.getpid()}-{int(began * 1000) % 10**8}"
    k = keys(prefix)
    stream = k["stream"]
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    logs = Path(log_dir or tempfile.mkdtemp(prefix="lifecycle-redis-roll-"))
    result = RollResult(mode=mode, produced=messages, sigterms=sigterms, sigkills=sigkills)
    result.log_dir = str(logs)
    counter = iter(range(1, 10_000))

    def spawn(started: list[_Child]) -> _Child:
        name = f"c{next(counter)}"
        argv = [sys.executable, "-m", "tests.procs.redis_consumer", url, prefix, name, mode]
        child = _Child([*argv, str(min_idle), str(claim_every)], name, logs)
        started.append(child)
        return child

    produced: list[str] = []

    def produce() -> None:
        pace = produce_seconds / messages
        start = time.monotonic()
        for i in range(messages):
            delay = start + i * pace - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            produced.append(client.xadd(stream, {"n": str(i)}))

    with _children() as started:
        live = [spawn(started) for _ in range(consumers)]
        for child in live:
            _wait_connected(client, child.name, child)
        producer = threading.Thread(target=produce, name="producer", daemon=True)
        producer.start()
        base = time.monotonic()
        events = sigterms + sigkills
        kill_at = {events // 2 + 1} if sigkills else set()  # SIGKILL in the middle
        step = produce_seconds / (events + 1)
        for n in range(1, events + 1):
            time.sleep(max(0.0, base + n * step - time.monotonic()))
            victim = live.pop(0)
            replacement = spawn(started)
            live.append(replacement)
            signum = signal.SIGKILL if n in kill_at else signal.SIGTERM
            sent = victim.signal(signum)
            code = victim.wait(EXIT_BOUND)
            result.exits.append(Exit(victim.name, signum.name, code, time.monotonic() - sent))
            _wait_connected(client, replacement.name, replacement)
        producer.join(produce_seconds * 3 + 10)
        drain_start = time.monotonic()
        # The naive loop never claims: once nothing moves for a second, nothing will. The
        # claiming kinds take up to min_idle + a fetch block to sweep a killed one's entries.
        settle = 1.0 if mode == "naive" else 2 * min_idle + 1.0
        _drain(client, stream, drain_bound, settle)
        result.drained_seconds = time.monotonic() - drain_start
        for child in live:
            child.signal(signal.SIGTERM)
        for child in live:
            child.wait(EXIT_BOUND)
    _ledger(client, k, produced, result)
    result.seconds = time.monotonic() - began
    return result


def _group(client: Any, stream: str) -> dict[str, Any]:
    groups: list[dict[str, Any]] = client.xinfo_groups(stream)
    return next(g for g in groups if g["name"] == GROUP)


def _drain(client: Any, stream: str, bound: float, settle: float) -> None:
    """Wait until all is read and acked, or nothing changed for ``settle`` seconds."""
    deadline = time.monotonic() + bound
    last: tuple[int, int] | None = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        group = _group(client, stream)
        now = (int(group["pending"]), int(group.get("lag") or 0))
        if now == (0, 0):
            return
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > settle:
            return
        time.sleep(0.05)


def _ledger(client: Any, k: dict[str, str], produced: list[str], result: RollResult) -> None:
    attempts = {i: int(v) for i, v in client.hgetall(k["attempts"]).items()}
    effects = {i: int(v) for i, v in client.hgetall(k["effects"]).items()}
    group = _group(client, k["stream"])
    result.produced = len(produced)
    result.handled = sum(1 for i in produced if i in attempts)
    result.never_handled = sum(1 for i in produced if i not in attempts)
    result.pending = int(group["pending"])
    result.unread = int(group.get("lag") or 0)
    result.effect_once = sum(1 for i in produced if effects.get(i) == 1)
    result.effect_repeated = sum(1 for i in produced if effects.get(i, 0) > 1)
    result.effect_missing = sum(1 for i in produced if i not in effects)
    result.lost = result.effect_missing  # what a user misses: the effect never happened
    result.handler_reruns = sum(v - 1 for v in attempts.values())
    result.dead_lettered = int(client.xlen(k["dead"])) if client.exists(k["dead"]) else 0
    totals: dict[str, int] = {}
    for key in client.scan_iter(f"{k['stats']}:*"):
        for field, value in client.hgetall(key).items():
            totals[field] = totals.get(field, 0) + int(value)
    result.stats = totals
