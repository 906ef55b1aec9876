"""lifecycle.redis against a real redis-server: history, claims, dead letters, give-back, dedupe."""

from __future__ import annotations

import asyncio
import doctest
import inspect
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lifecycle
from lifecycle import CancelSource
from lifecycle._workers.dedupe import Claim
from tests.redis_server import RedisServer, client, redis_server_or_skip

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")
lcredis = pytest.importorskip("lifecycle.redis")
StreamSource = lcredis.StreamSource
RedisDedupe = lcredis.RedisDedupe
Message = lcredis.Message

ROOT = Path(__file__).resolve().parent.parent
BOUND = 10.0
"""Seconds any wait here may take before the test fails (a hang detector)."""
STREAM, GROUP = "orders", "billing"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server_or_skip() as running:
        yield running


@pytest.fixture
def r(server: RedisServer) -> Iterator[Any]:
    conn = client(server)
    conn.flushall()
    try:
        yield conn
    finally:
        conn.close()


def live() -> lifecycle.CancelToken:
    return CancelSource().token


def produce(r: Any, n: int, stream: str = STREAM) -> list[str]:
    return [r.xadd(stream, {"n": str(i)}) for i in range(n)]


def fetch_until(source: Any, want: int, *, limit: int = 100) -> list[Any]:
    """Fetch (bounded) until ``want`` messages came back."""
    got: list[Any] = []
    deadline = time.monotonic() + BOUND
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} fetched in {BOUND} s"
        got += source.fetch(limit, live())
    return got


def pending(r: Any) -> dict[str, tuple[str, int]]:
    """id -> (consumer, deliveries) of the group's pending list."""
    rows = r.xpending_range(STREAM, GROUP, "-", "+", 10_000)
    return {row["message_id"]: (row["consumer"], row["times_delivered"]) for row in rows}


def test_import_lifecycle_does_not_import_redis():
    """``import lifecycle`` leaves redis-py unimported; lifecycle.redis imports it."""
    code = "import sys, lifecycle; print('redis' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


def test_docstring_examples_run():
    """The examples in lifecycle.redis's docstrings run as written."""
    result = doctest.testmod(lcredis, optionflags=doctest.ELLIPSIS)
    assert (result.failed, result.attempted > 5) == (0, True)


def test_first_fetch_creates_group_and_stream(r):
    """The first fetch creates a missing group with MKSTREAM, from the stream's start."""
    source = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    assert source.fetch(10, live()) == []
    assert [g["name"] for g in r.xinfo_groups(STREAM)] == [GROUP]
    ids = produce(r, 2)
    assert [m.id for m in fetch_until(source, 2)] == ids


def test_group_from_zero_delivers_entries_written_before_it(r):
    """create_from='0' (the default) delivers what the stream held before the group existed."""
    ids = produce(r, 3)
    source = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    assert [m.id for m in fetch_until(source, 3)] == ids


def test_own_pending_history_is_read_first_after_restart(r):
    """A restarted consumer (same name) gets its unacked entries back before any new one."""
    first = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    first.fetch(1, live())  # creates the group
    old = produce(r, 3)
    assert [m.id for m in fetch_until(first, 3)] == old
    new = produce(r, 2)
    restarted = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    batch = restarted.fetch(10, live())
    assert [(m.id, m.deliveries) for m in batch] == [(i, 2) for i in old]
    assert [m.id for m in fetch_until(restarted, 2)] == new
    assert restarted.stats.history == 3


def test_history_is_read_in_batches_of_limit(r):
    """History is paged with the cursor: limit 2 over 5 pending entries returns 2, 2, 1."""
    first = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    first.fetch(1, live())
    old = produce(r, 5)
    fetch_until(first, 5)
    restarted = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    sizes = [len(restarted.fetch(2, live())) for _ in range(3)]
    assert sizes == [2, 2, 1]
    assert set(pending(r)) == set(old)


def test_history_entry_deleted_from_stream_is_acked_not_returned(r):
    """A pending entry deleted from the stream comes back without fields: acked, not handled."""
    first = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    first.fetch(1, live())
    ids = produce(r, 2)
    fetch_until(first, 2)
    r.xdel(STREAM, ids[0])
    restarted = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    assert [m.id for m in restarted.fetch(10, live())] == [ids[1]]
    assert list(pending(r)) == [ids[1]]


def _start_holder(server: RedisServer, consumer: str, count: int) -> tuple[Any, list[str]]:
    argv = [sys.executable, "-m", "tests.procs.redis_hold", server.url, STREAM, GROUP]
    proc = subprocess.Popen(
        [*argv, consumer, str(count)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the child fetches with a bound and then prints
    if not line:
        proc.kill()
        pytest.fail(f"holder child printed nothing: {proc.communicate(timeout=BOUND)[1]}")
    return proc, json.loads(line)["held"]


@pytest.mark.process
def test_autoclaim_recovers_a_sigkilled_consumers_messages(server, r):
    """Entries held by a SIGKILLed consumer are claimed by another one once min_idle passed."""
    StreamSource(r, STREAM, GROUP, "setup", block=0.05).fetch(1, live())
    ids = produce(r, 4)
    proc, held = _start_holder(server, "doomed", 4)
    try:
        assert held == ids
    finally:
        proc.kill()
        proc.communicate(timeout=BOUND)  # reaps it and closes the pipes
    assert {c for c, _ in pending(r).values()} == {"doomed"}
    min_idle = 0.5
    rescuer = StreamSource(r, STREAM, GROUP, "rescuer", min_idle=min_idle, claim_every=0.05)
    before = time.monotonic()
    early = rescuer.fetch(10, CancelSource(timeout=0.0).token)  # cancelled: no block, no claim
    assert early == []
    idle_now = min(
        row["time_since_delivered"] for row in r.xpending_range(STREAM, GROUP, "-", "+", 10)
    )
    if idle_now < min_idle * 1000 * 0.5:
        # Still young: a claim now must not take them (min_idle is honoured).
        quick = StreamSource(r, STREAM, GROUP, "quick", min_idle=min_idle * 4, block=0.01)
        assert quick.fetch(10, live()) == []
    got = fetch_until(rescuer, 4)
    assert sorted(m.id for m in got) == ids
    assert all(m.deliveries == 2 for m in got)
    assert time.monotonic() - before < BOUND
    assert {c for c, _ in pending(r).values()} == {"rescuer"}
    assert rescuer.stats.claimed == 4
    rescuer.ack(got)
    assert pending(r) == {}


def test_dead_letter_after_max_deliveries_exactly_once_and_acked(r):
    """The delivery past max_deliveries goes to the dead-letter stream once, with its origin."""
    kw: dict[str, Any] = {"max_deliveries": 2, "dead_letter": "orders:dead", "block": 0.05}
    a = StreamSource(r, STREAM, GROUP, "a", **kw)
    a.fetch(1, live())
    (entry,) = produce(r, 1)
    (m1,) = fetch_until(a, 1)
    a.give_back([m1])
    b = StreamSource(r, STREAM, GROUP, "b", **kw)
    (m2,) = b.fetch(10, live())
    assert (m2.id, m2.deliveries) == (entry, 2)
    b.give_back([m2])
    c = StreamSource(r, STREAM, GROUP, "c", **kw)
    assert c.fetch(10, live()) == []
    assert pending(r) == {}
    dead = r.xrange("orders:dead")
    assert len(dead) == 1
    assert dead[0][1] == {
        "n": "0",
        "source_stream": STREAM,
        "source_id": entry,
        "source_group": GROUP,
        "deliveries": "3",
    }
    assert c.stats.dead_lettered == 1
    # A second consumer racing for the same entry does not copy it again.
    c._to_dead_letter(entry, {"n": "0"}, 3)
    assert r.xlen("orders:dead") == 1


def test_give_back_makes_messages_available_to_another_consumer_at_once(r):
    """Given back, entries go to another consumer's very next fetch, despite a 60 s min_idle."""
    a = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    a.fetch(1, live())
    ids = produce(r, 3)
    got = fetch_until(a, 3)
    a.give_back(got)
    assert a.held == 0
    b = StreamSource(r, STREAM, GROUP, "b", min_idle=60.0, block=0.05)
    started = time.monotonic()
    again = b.fetch(10, live())
    assert (sorted(m.id for m in again), time.monotonic() - started < 1.0) == (ids, True)
    assert {c for c, _ in pending(r).values()} == {"b"}
    # Giving back keeps the count of the delivery that was made.
    assert [m.deliveries for m in again] == [2, 2, 2]


def test_give_back_leaves_an_entry_another_consumer_claimed_meanwhile(r):
    """A late give_back does not take back (or expose) an entry another consumer now owns."""
    a = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    a.fetch(1, live())
    produce(r, 1)
    (msg,) = fetch_until(a, 1)
    r.xclaim(STREAM, GROUP, "b", 0, [msg.id])  # b claimed it, as after min_idle
    a.give_back([msg])
    row = r.xpending_range(STREAM, GROUP, "-", "+", 1)[0]
    assert (row["consumer"], row["time_since_delivered"] < 60_000) == ("b", True)
    assert a.stats.given_back == 0


def test_fetch_returns_promptly_once_its_token_is_cancelled(r):
    """A fetch blocked on an empty stream returns [] within ~BLOCK_SLICE of the cancel."""
    source = StreamSource(r, STREAM, GROUP, "a", block=30.0)
    source.ensure_group()
    cancel = CancelSource()
    result: list[Any] = []
    entered = threading.Event()

    def run() -> None:
        entered.set()
        result.append(source.fetch(10, cancel.token))

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(BOUND)
    # Wait until the fetch is blocked in the server, not just started.
    deadline = time.monotonic() + BOUND
    while not any(c.get("cmd") == "xreadgroup" for c in r.client_list()):
        assert time.monotonic() < deadline
    cancelled_at = time.monotonic()
    cancel.cancel("stop")
    thread.join(BOUND)
    took = time.monotonic() - cancelled_at
    assert (result, took < 0.5 + lcredis.BLOCK_SLICE) == ([[]], True), took


def test_fetch_with_a_cancelled_token_reads_nothing(r):
    """A fetch whose token is already cancelled returns [] and takes nothing into the PEL."""
    produce(r, 2)
    source = StreamSource(r, STREAM, GROUP, "a")
    token = CancelSource(timeout=0.0).token
    assert source.fetch(10, token) == []
    source.ensure_group()
    assert pending(r) == {}


def test_fetch_recreates_a_group_deleted_while_running(r):
    """A stream deleted under a running consumer: the next fetches create the group again."""
    source = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    source.fetch(1, live())
    r.delete(STREAM)
    assert source.fetch(10, live()) == []  # NOGROUP: noticed, logged, reset
    assert source.fetch(10, live()) == []  # the group and the stream exist again
    ids = produce(r, 1)
    assert [m.id for m in fetch_until(source, 1)] == ids


def test_redis_dedupe_effect_exactly_once_across_two_consumers(r):
    """Two consumers commit the same message's effect at once: it is applied once."""
    dedupe = RedisDedupe(r, "orders:billing")
    msg = Message(id="1-0", body={})
    in_effect = threading.Event()
    proceed = threading.Event()
    outcome: dict[str, bool] = {}

    def slow_effect(pipe: Any) -> None:
        pipe.hincrby("effects", msg.id, 1)
        if not in_effect.is_set():
            in_effect.set()
            assert proceed.wait(BOUND)  # the other consumer commits meanwhile

    def slow() -> None:
        outcome["slow"] = dedupe.commit(msg, slow_effect)

    thread = threading.Thread(target=slow)
    thread.start()
    assert in_effect.wait(BOUND)
    assert dedupe.claim(msg)  # not done yet: the other one may handle it
    outcome["fast"] = dedupe.commit(msg, lambda pipe: pipe.hincrby("effects", msg.id, 1))
    proceed.set()
    thread.join(BOUND)
    assert outcome == {"fast": True, "slow": False}
    assert r.hget("effects", msg.id) == "1"
    assert not dedupe.claim(msg)
    assert 0 < r.ttl(dedupe.key(msg)) <= 7 * 86400


def test_redis_dedupe_redelivery_after_effect_is_skipped(r):
    """Died after the effect, before XACK: the redelivered entry is claimed False and acked."""
    dedupe = RedisDedupe(r, "orders:billing", remember=60)
    a = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    a.fetch(1, live())
    produce(r, 1)
    (msg,) = fetch_until(a, 1)
    assert dedupe.claim(msg)
    assert dedupe.commit(msg, lambda pipe: pipe.incr("total"))
    a.give_back([msg])  # stands for the death before XACK
    b = StreamSource(r, STREAM, GROUP, "b", block=0.05)
    (again,) = b.fetch(10, live())
    assert (again.id, dedupe.claim(again)) == (msg.id, Claim.DONE)
    assert dedupe.commit(again, lambda pipe: pipe.incr("total")) is False
    b.ack([again])
    assert (r.get("total"), pending(r)) == ("1", {})


def test_a_consumer_with_pending_entries_is_never_deleted(r):
    """delete_consumer refuses while the consumer holds entries, and deletes once it holds none."""
    a = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    a.fetch(1, live())
    produce(r, 1)
    (msg,) = fetch_until(a, 1)
    assert a.delete_consumer() is False
    assert [(c["name"], c["pending"]) for c in r.xinfo_consumers(STREAM, GROUP)] == [("a", 1)]
    a.ack([msg])
    assert (a.stats.acked, a.delete_consumer()) == (1, True)
    assert r.xinfo_consumers(STREAM, GROUP) == []


def test_ack_counts_entries_no_longer_pending(r):
    """Acking an entry someone else acked already is counted as missed, not as acked."""
    a = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    a.fetch(1, live())
    produce(r, 2)
    got = fetch_until(a, 2)
    r.xack(STREAM, GROUP, got[0].id)
    a.ack(got)
    assert (a.stats.acked, a.stats.ack_missed, a.held) == (1, 1, 0)


BAD = [
    ({"min_idle": 0}, "min_idle"),
    ({"min_idle": -1}, "min_idle"),
    ({"min_idle": math.nan}, "min_idle"),
    ({"min_idle": "60"}, "min_idle"),
    ({"min_idle": 2_000_000}, "min_idle"),
    ({"claim_every": 0}, "claim_every"),
    ({"block": math.inf}, "block"),
    ({"max_deliveries": 0, "dead_letter": "d"}, "max_deliveries"),
    ({"max_deliveries": 3}, "dead-letter"),
    ({"max_deliveries": 2.5, "dead_letter": "d"}, "max_deliveries"),
    ({"dead_letter": STREAM}, "dead_letter"),
    ({"dead_letter": ""}, "dead_letter"),
    ({"create_from": "1"}, "create_from"),
]


@pytest.mark.parametrize(("kwargs", "named"), BAD, ids=[str(k) for k, _ in BAD])
def test_bad_arguments_name_the_argument_and_the_fix(r, kwargs, named):
    """Every invalid option fails at construction, naming the option and a value that works."""
    with pytest.raises((ValueError, TypeError)) as info:
        StreamSource(r, STREAM, GROUP, "a", **kwargs)
    text = str(info.value)
    assert named in text
    assert "StreamSource" in text
    assert "pass" in text or "must be" in text


@pytest.mark.parametrize(
    "args", [(None, STREAM, GROUP, "a"), ("r", "", GROUP, "a"), ("r", STREAM, GROUP, "")]
)
def test_bad_client_or_names_are_refused(r, args):
    """A missing client or an empty stream/consumer name is refused with the fix."""
    real = [r if a == "r" else a for a in args]
    with pytest.raises((ValueError, TypeError), match=r"StreamSource: .* pass"):
        StreamSource(*real)


def test_bad_fetch_limit_and_dedupe_arguments(r):
    """fetch(limit=0) and RedisDedupe(remember=0) are refused with clear messages."""
    source = StreamSource(r, STREAM, GROUP, "a")
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        source.fetch(0, live())
    with pytest.raises(ValueError, match="RedisDedupe: remember"):
        RedisDedupe(r, "x", remember=0)
    with pytest.raises(ValueError, match="RedisDedupe: name"):
        RedisDedupe(r, "")


def test_delete_consumer_with_timeout_waits_for_others_to_claim(r):
    """After a give-back, delete_consumer(timeout) succeeds once another consumer claimed it all."""
    a = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    a.fetch(1, live())
    produce(r, 2)
    got = fetch_until(a, 2)
    a.give_back(got)
    assert a.delete_consumer() is False  # given back, still pending under "a"
    b = StreamSource(r, STREAM, GROUP, "b", block=0.05)
    claimer = threading.Thread(target=lambda: b.fetch(10, live()))
    claimer.start()
    assert a.delete_consumer(timeout=BOUND) is True
    claimer.join(BOUND)
    assert [c["name"] for c in r.xinfo_consumers(STREAM, GROUP)] == ["b"]


def test_consumer_stop_gives_back_prefetched_entries_to_another_consumer_at_once(r):
    """lifecycle's Consumer over a StreamSource: at the stop, the in-flight one is acked and
    the prefetched ones go to another consumer's next fetch."""
    consumer_mod = pytest.importorskip("lifecycle._workers.consumer")
    a = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    a.ensure_group()
    ids = produce(r, 5)
    started, release = threading.Event(), threading.Event()
    handled: list[str] = []

    def handle(message: Any) -> None:
        started.set()
        assert release.wait(BOUND)
        handled.append(message.id)

    consumer = consumer_mod.Consumer(a, handle, concurrency=1, prefetch=4)
    run = CancelSource()
    runner = threading.Thread(target=consumer.run, args=(run.token,))
    runner.start()
    assert started.wait(BOUND)
    deadline = time.monotonic() + BOUND
    while consumer.stats().buffered < 4:  # the prefetch filled up behind the busy handler
        assert time.monotonic() < deadline, consumer.stats()
        time.sleep(0.01)
    run.cancel("stop phase")
    runner.join(BOUND)
    stopper = threading.Thread(target=consumer.stop, args=(CancelSource(timeout=5).token,))
    stopper.start()
    b = StreamSource(r, STREAM, GROUP, "b", min_idle=60, block=0.05)
    taken = b.fetch(10, live())
    release.set()
    stopper.join(BOUND)
    assert handled == ids[:1]
    assert sorted(m.id for m in taken) == ids[1:]
    assert pending(r) == dict.fromkeys(ids[1:], ("b", 2))
    assert (a.stats.acked, a.stats.given_back, a.held) == (1, 4, 0)


# -- the asyncio twin ------------------------------------------------------------------------


def run_async(server: RedisServer, body: Any) -> Any:
    """Run ``body(client)`` with a ``redis.asyncio`` client on a fresh loop, bounded."""
    import redis.asyncio as aioredis  # noqa: PLC0415 - with the rest of redis-py, lazily

    async def main() -> Any:
        conn = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            return await asyncio.wait_for(body(conn), BOUND)
        finally:
            await conn.aclose()

    return asyncio.run(main())


async def afetch_until(source: Any, want: int) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + BOUND
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} fetched in {BOUND} s"
        got += await source.fetch(100, live())
    return got


def test_async_source_history_give_back_and_ack(server, r):
    """AsyncStreamSource: history first after a restart; given back goes to another at once."""
    AsyncStreamSource = lcredis.AsyncStreamSource

    async def body(conn: Any) -> None:
        first = AsyncStreamSource(conn, STREAM, GROUP, "a", block=0.05)
        await first.fetch(1, live())
        old = produce(r, 3)
        assert [m.id for m in await afetch_until(first, 3)] == old
        restarted = AsyncStreamSource(conn, STREAM, GROUP, "a", block=0.05)
        again = await restarted.fetch(10, live())
        assert [(m.id, m.deliveries) for m in again] == [(i, 2) for i in old]
        assert await restarted.delete_consumer() is False
        await restarted.give_back(again)
        other = AsyncStreamSource(conn, STREAM, GROUP, "b", min_idle=60, block=0.05)
        taken = await other.fetch(10, live())
        assert [m.id for m in taken] == old
        await other.ack(taken)
        assert (other.stats.acked, await restarted.delete_consumer()) == (3, True)

    run_async(server, body)
    assert pending(r) == {}


def test_async_fetch_returns_promptly_once_its_token_is_cancelled(server, r):
    """An async fetch blocked on an empty stream returns [] within ~BLOCK_SLICE of the cancel."""

    async def body(conn: Any) -> float:
        source = lcredis.AsyncStreamSource(conn, STREAM, GROUP, "a", block=30.0)
        await source.ensure_group()
        cancel = CancelSource()
        task = asyncio.ensure_future(source.fetch(10, cancel.token))
        while not any(c.get("cmd") == "xreadgroup" for c in r.client_list()):
            await asyncio.sleep(0.005)  # poll the server's view; bounded by wait_for
        cancelled_at = time.monotonic()
        cancel.cancel("stop")
        assert await task == []
        return time.monotonic() - cancelled_at

    took = run_async(server, body)
    assert took < 0.5 + lcredis.BLOCK_SLICE, took


def test_async_dead_letter_after_max_deliveries(server, r):
    """AsyncStreamSource dead-letters the delivery past max_deliveries, once, and acks it."""

    async def body(conn: Any) -> None:
        kw: dict[str, Any] = {"max_deliveries": 1, "dead_letter": "orders:dead", "block": 0.05}
        a = lcredis.AsyncStreamSource(conn, STREAM, GROUP, "a", **kw)
        await a.fetch(1, live())
        produce(r, 1)
        await a.give_back(await afetch_until(a, 1))
        b = lcredis.AsyncStreamSource(conn, STREAM, GROUP, "b", **kw)
        assert await b.fetch(10, live()) == []
        assert b.stats.dead_lettered == 1

    run_async(server, body)
    assert (pending(r), r.xlen("orders:dead")) == ({}, 1)


@pytest.mark.parametrize("twin", ["StreamSource", "AsyncStreamSource"])
def test_both_twins_claim_a_killed_consumers_idle_entries_at_the_same_cadence(server, r, twin):
    """Entries a killed consumer left pending, idle past min_idle: either twin's first fetch
    claims them, and a later entry gone idle is claimed within claim_every + block of it (the
    scan is decided once for both twins, at the start of each fetch once it is due)."""
    min_idle, claim_every, block = 2.0, 0.05, 0.05
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)

    def left_by_a_killed_consumer(n: int) -> list[str]:
        ids = produce(r, n)
        r.xreadgroup(GROUP, "killed", {STREAM: ">"}, count=10)  # delivered, never acked
        # Idle past min_idle without waiting for it: XCLAIM ... IDLE sets the idle time
        # (JUSTID: it counts no delivery).
        r.xclaim(STREAM, GROUP, "killed", 0, ids, idle=int(min_idle * 1000) + 500, justid=True)
        return ids

    async def maybe(value: Any) -> Any:
        return await value if inspect.isawaitable(value) else value

    async def body(conn: Any) -> float:
        kind = getattr(lcredis, twin)
        kw: dict[str, Any] = {"min_idle": min_idle, "claim_every": claim_every, "block": block}
        source = kind(conn if twin == "AsyncStreamSource" else r, STREAM, GROUP, "rescuer", **kw)
        first = left_by_a_killed_consumer(3)
        got = await maybe(source.fetch(10, live()))
        assert [(m.id, m.deliveries) for m in got] == [(i, 2) for i in first]
        later = left_by_a_killed_consumer(1)
        began = time.monotonic()
        again: list[Any] = []
        while not again:  # bounded by run_async's BOUND
            again = await maybe(source.fetch(10, live()))
        took = time.monotonic() - began
        assert [m.id for m in again] == later
        assert source.stats.claimed == 4
        assert await maybe(source.ack([*got, *again])) == 4
        return took

    took = run_async(server, body)
    assert took < 1.0, f"the next scan came {took:.2f} s later (claim_every={claim_every})"
    assert pending(r) == {}


def test_async_bad_arguments_name_the_class():
    """AsyncStreamSource's errors name AsyncStreamSource, with the fix."""
    import redis.asyncio as aioredis  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"AsyncStreamSource: claim_every .* pass"):
        lcredis.AsyncStreamSource(aioredis.Redis(port=1), STREAM, GROUP, "a", claim_every=-1)


def test_a_client_of_the_other_kind_is_refused_with_the_twin_named(r):
    """A sync client for AsyncStreamSource (or an asyncio one for StreamSource) fails at once."""
    import redis.asyncio as aioredis  # noqa: PLC0415

    with pytest.raises(TypeError, match=r"AsyncStreamSource: .*redis.asyncio.Redis.*StreamSource"):
        lcredis.AsyncStreamSource(r, STREAM, GROUP, "a")
    with pytest.raises(TypeError, match=r"StreamSource: client must be a redis.Redis.*Async"):
        StreamSource(aioredis.Redis(port=1), STREAM, GROUP, "a")


def test_give_back_runs_in_chunks_and_answers_what_it_took(r):
    """A big give_back is several short scripts (Redis is not blocked by one long one), and
    it answers how many entries it marked."""
    a = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    a.fetch(1, live())
    produce(r, 1201)
    got = fetch_until(a, 1201, limit=2000)
    assert a.give_back(got[:1]) == 1  # loads the script
    before = r.info("commandstats")
    assert a.give_back(got[1:]) == 1200
    after = r.info("commandstats")

    def scripts(stats: dict[str, Any]) -> int:
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))

    assert scripts(after) - scripts(before) == math.ceil(1200 / lcredis.GIVE_BACK_CHUNK)
    assert a.stats.given_back == 1201
    assert a.held == 0
    r.xclaim(STREAM, GROUP, "b", 0, [got[0].id])  # b owns it now: nothing to give back
    assert a.give_back(got[:1]) == 0


def test_a_fetch_failing_after_a_claim_gives_the_claimed_entries_back(r):
    """XAUTOCLAIM took entries, then the dead-letter step failed: the claimed entries are given
    back at once (not left idle-less in this consumer's pending list), and none is acked."""
    a = StreamSource(r, STREAM, GROUP, "a", block=0.05)
    a.fetch(1, live())
    e1, e2 = produce(r, 2)
    fetch_until(a, 2)
    r.xclaim(STREAM, GROUP, "a", 0, [e1], idle=10**9)  # a second delivery of e1
    r.xclaim(STREAM, GROUP, "a", 0, [e2], idle=10**9, justid=True)
    r.set("orders:dead", "not a stream")  # the dead-letter step fails
    b = StreamSource(
        r, STREAM, GROUP, "b", min_idle=60.0, max_deliveries=2, dead_letter="orders:dead"
    )
    with pytest.raises(redis.ResponseError, match="orders:dead"):
        b.fetch(10, live())
    assert b.held == 0
    rows = {row["message_id"]: row for row in r.xpending_range(STREAM, GROUP, "-", "+", 10)}
    assert sorted(rows) == sorted([e1, e2])  # nothing acked, nothing lost
    assert all(row["time_since_delivered"] >= 10**8 for row in rows.values())  # given back


def test_redis_dedupe_answers_done_or_handle(r):
    """RedisDedupe.claim answers a Claim: HANDLE before the mark exists, DONE after (no lease,
    so never BUSY: the pending list gives each entry one owner)."""
    dedupe = RedisDedupe(r, "orders:billing")
    msg = Message(id="1-0", body={})
    assert dedupe.claim(msg) is Claim.HANDLE
    assert dedupe.claim(msg) is Claim.HANDLE
    dedupe.done(msg)
    assert dedupe.claim(msg) is Claim.DONE


def test_an_async_consumer_refuses_redis_dedupe(r):
    """RedisDedupe calls Redis synchronously: AsyncConsumer refuses it and names the fix."""

    async def handle(m: Any) -> None:
        pass

    with pytest.raises(TypeError, match=r"RedisDedupe.*Consumer"):
        lifecycle.AsyncConsumer(
            lifecycle.AsyncQueueSource(asyncio.Queue()),
            handle,
            dedupe=RedisDedupe(r, "orders:billing"),
        )


def test_the_async_source_docstring_is_its_own():
    """AsyncStreamSource documents a redis.asyncio client, not threads sharing a sync one."""
    doc = lcredis.AsyncStreamSource.__doc__ or ""
    assert "thread" not in doc
    assert "redis.asyncio.Redis" in doc
