"""The proof for Redis Streams: consumer processes replaced under a producer lose nothing.

tests/procs/redis_roll.py runs 3 consumer processes (a `lifecycle.App` with
a `Consumer` over `lifecycle.redis.StreamSource`, concurrency 8, with a
`RedisDedupe`; and the same with `AsyncConsumer` over `AsyncStreamSource`)
on a real redis-server, produces 500 entries at a steady
pace, and meanwhile replaces a consumer process 3 times: SIGTERM, SIGKILL
(its entries recovered by the others' XAUTOCLAIM after min_idle), SIGTERM.
The naive loop (XREADGROUP + handle + XACK, default SIGTERM) in the same
roll is measured for the record: what it loses depends on timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.procs.redis_roll import roll
from tests.redis_server import RedisServer, client, redis_server_or_skip

pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")

pytestmark = [pytest.mark.e2e, pytest.mark.process]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server_or_skip() as running:
        yield running


@pytest.fixture
def r(server: RedisServer) -> Iterator[Any]:
    conn = client(server)
    try:
        yield conn
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["lifecycle", "asyncio"])
def test_lifecycle_consumers_lose_nothing_in_a_roll(server, r, mode):
    """500 entries, 2 SIGTERMs and 1 SIGKILL: every effect exactly once, nothing pending, exit 0
    (threaded Consumer + StreamSource, and AsyncConsumer + AsyncStreamSource)."""
    result = roll(r, server.url, mode, messages=500, sigterms=2, sigkills=1, produce_seconds=3.0)
    summary = result.summary()
    assert result.produced == 500, summary
    assert (result.never_handled, result.lost) == (0, 0), summary
    assert (result.effect_once, result.effect_repeated) == (500, 0), summary
    assert (result.pending, result.unread) == (0, 0), summary
    assert result.sigterm_codes == [0, 0], summary
    assert [e.signal for e in result.exits] == ["SIGTERM", "SIGKILL", "SIGTERM"], summary


def test_naive_loop_in_the_same_roll_is_measured(server, r):
    """The naive loop in the same roll runs through; what it loses or leaves pending is printed."""
    result = roll(r, server.url, "naive", messages=500, sigterms=2, sigkills=1, produce_seconds=3.0)
    assert result.produced == 500, result.summary()
    print(
        f"\nnaive loop: lost {result.lost} of {result.produced}, left pending "
        f"{result.pending}, exit codes after SIGTERM {result.sigterm_codes}"
    )
