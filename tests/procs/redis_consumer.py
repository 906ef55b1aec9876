"""A consumer process for the Redis Streams roll (tests/procs/redis_roll.py).

Usage::

    python -m tests.procs.redis_consumer URL PREFIX NAME MODE [MIN_IDLE CLAIM_EVERY]

MODE is ``lifecycle`` (a `lifecycle.App` running a `Consumer` over a
`StreamSource`, concurrency 8, with a `RedisDedupe`; SIGTERM is a graceful
stop), ``asyncio`` (the same with `AsyncConsumer` over `AsyncStreamSource`
on ``redis.asyncio``, the effect and its done-mark in one ``MULTI/EXEC``
under ``WATCH``, as `RedisDedupe.commit` does) or ``naive`` (the loop
people write first: ``XREADGROUP >`` a batch of 8, handle them on 8
threads, ``XACK`` each; Python's default SIGTERM, which ends the process at
once).

The handler is the same in both: count the attempt (``HINCRBY
<prefix>:attempts``), work for 10-50 ms, apply the effect (``HINCRBY
<prefix>:effects``). Under lifecycle the effect and its done-mark commit in
one transaction (`RedisDedupe.commit`); naive has no dedupe. At a clean
exit the process writes its counters to ``<prefix>:stats:<NAME>`` and
deletes its consumer from the group if it holds nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio as aioredis

import lifecycle
from lifecycle._workers.consumer import AsyncConsumer, Consumer, Message
from lifecycle.redis import AsyncStreamSource, RedisDedupe, StreamSource

CONCURRENCY = 8
WORK = (0.010, 0.050)
"""Seconds one message's handler works, uniformly at random."""
NAIVE_BOUND = 300.0
"""Seconds the naive loop runs at most (the roll ends it long before)."""


def keys(prefix: str) -> dict[str, str]:
    """The keys of one roll; one hash tag, so a cluster would keep them together."""
    return {
        "stream": f"{{{prefix}}}:stream",
        "dead": f"{{{prefix}}}:dead",
        "attempts": f"{{{prefix}}}:attempts",
        "effects": f"{{{prefix}}}:effects",
        "stats": f"{{{prefix}}}:stats",
    }


GROUP = "workers"


def work() -> None:
    time.sleep(random.uniform(*WORK))


def run_lifecycle(client: Any, prefix: str, name: str, min_idle: float, claim_every: float) -> int:
    k = keys(prefix)
    source = StreamSource(
        client,
        k["stream"],
        GROUP,
        name,
        min_idle=min_idle,
        claim_every=claim_every,
        block=0.5,
        dead_letter=k["dead"],
        max_deliveries=20,
    )
    dedupe = RedisDedupe(client, prefix, remember=3600)

    def handle(message: Message) -> None:
        client.hincrby(k["attempts"], message.id, 1)
        work()
        dedupe.commit(message, lambda pipe: pipe.hincrby(k["effects"], message.id, 1))

    consumer = Consumer(source, handle, concurrency=CONCURRENCY, dedupe=dedupe)
    app = lifecycle.App(name, stop_timeout=5.0, shutdown_timeout=15.0)
    app.add(consumer, name="consumer", stop_timeout=5.0)
    code = lifecycle.run(app)
    deleted = source.delete_consumer(timeout=2.0)
    stats = {**source.stats.as_dict(), "exit": int(code), "deleted": int(deleted)}
    stats.update({f"consumer_{k}": v for k, v in vars_of(consumer.stats()).items()})
    client.hset(f"{k['stats']}:{name}", mapping=stats)
    return int(code)


def run_asyncio(url: str, prefix: str, name: str, min_idle: float, claim_every: float) -> int:
    k = keys(prefix)
    aclient = aioredis.Redis.from_url(url, decode_responses=True, client_name=name)
    source = AsyncStreamSource(
        aclient,
        k["stream"],
        GROUP,
        name,
        min_idle=min_idle,
        claim_every=claim_every,
        block=0.5,
        dead_letter=k["dead"],
        max_deliveries=20,
    )

    async def commit(message: Message) -> bool:
        mark = f"lifecycle:done:{prefix}:{message.id}"
        async with aclient.pipeline(transaction=True) as pipe:
            for _attempt in range(5):
                try:
                    await pipe.watch(mark)
                    if await pipe.exists(mark):
                        await pipe.reset()
                        return False
                    pipe.multi()
                    pipe.hincrby(k["effects"], message.id, 1)
                    pipe.set(mark, "1", ex=3600)
                    await pipe.execute()
                    return True
                except redis.WatchError:
                    continue
        raise RuntimeError(f"mark {mark} kept changing")

    async def handle(message: Message) -> None:
        await aclient.hincrby(k["attempts"], message.id, 1)
        await asyncio.sleep(random.uniform(*WORK))
        await commit(message)

    consumer = AsyncConsumer(source, handle, concurrency=CONCURRENCY)
    app = lifecycle.App(name, stop_timeout=5.0, shutdown_timeout=15.0)
    deleted: list[bool] = []

    @app.resource(name="redis")
    async def connection() -> AsyncIterator[None]:
        # Stops after the consumer (which depends on it): the client's connections
        # belong to the runner's loop, so they are closed on it.
        yield
        try:
            deleted.append(await source.delete_consumer(timeout=2.0))
        finally:
            await aclient.aclose()

    app.add(consumer, name="consumer", stop_timeout=5.0, depends_on=["redis"])
    code = lifecycle.run(app)
    client: Any = redis.Redis.from_url(url, decode_responses=True)
    stats: dict[str, int] = {**source.stats.as_dict(), "exit": int(code)}
    stats["deleted"] = int(all(deleted) and bool(deleted))
    stats.update({f"consumer_{k}": v for k, v in vars_of(consumer.stats()).items()})
    client.hset(f"{k['stats']}:{name}", mapping=stats)
    return int(code)


def vars_of(stats: object) -> dict[str, int]:
    return {
        f: int(getattr(stats, f))
        for f in ("handled", "failed", "duplicates", "acked", "given_back", "cut")
    }


def run_naive(client: Any, prefix: str, name: str) -> int:
    k = keys(prefix)
    stream = k["stream"]

    def handle(entry_id: str) -> None:
        client.hincrby(k["attempts"], entry_id, 1)
        work()
        client.hincrby(k["effects"], entry_id, 1)
        client.xack(stream, GROUP, entry_id)

    deadline = time.monotonic() + NAIVE_BOUND
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        while time.monotonic() < deadline:
            reply = client.xreadgroup(GROUP, name, {stream: ">"}, count=CONCURRENCY, block=1000)
            ids = [entry_id for entry_id, _ in (reply[0][1] if reply else [])]
            list(pool.map(handle, ids))
    return 0


def main() -> int:
    url, prefix, name, mode = sys.argv[1:5]
    min_idle = float(sys.argv[5]) if len(sys.argv) > 5 else 2.0
    claim_every = float(sys.argv[6]) if len(sys.argv) > 6 else 0.2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    client = redis.Redis.from_url(url, decode_responses=True, client_name=name)
    if mode == "lifecycle":
        return run_lifecycle(client, prefix, name, min_idle, claim_every)
    if mode == "asyncio":
        return run_asyncio(url, prefix, name, min_idle, claim_every)
    if mode == "naive":
        return run_naive(client, prefix, name)
    raise SystemExit(f"unknown mode {mode!r}: use lifecycle, asyncio or naive")


if __name__ == "__main__":
    sys.exit(main())
