"""What a rolling restart of Redis Streams consumers loses: lifecycle next to a naive loop.

Run from the repository root (needs ``redis-server`` on PATH and redis-py)::

    python -m benchmarks.redis_streams [--messages 5000] [--sigterms 5] [--sigkills 1]
    python -m benchmarks.redis_streams --check   # exit 1 unless lifecycle lost nothing

One real redis-server on a free 127.0.0.1 port (persistence off), started
and ended by its PID. For each kind, in the same run and with the same
schedule (tests/procs/redis_roll.py): 3 consumer processes share one
consumer group; a producer adds ``--messages`` entries at a steady pace over
``--produce-seconds``; meanwhile a consumer process is replaced
``--sigterms + --sigkills`` times (the replacement starts as the old one is
signalled; the SIGKILL comes in the middle). Each handler counts its attempt,
works 10-50 ms, and applies its effect (``HINCRBY``).

* ``lifecycle``: a `lifecycle.App` running ``Consumer(StreamSource(...),
  concurrency=8, dedupe=RedisDedupe(...))``; the effect and its done-mark
  commit in one ``MULTI/EXEC`` (`RedisDedupe.commit`); ``min_idle`` 2 s.
* ``asyncio`` (``lc asyncio``): the same under the asyncio runner,
  ``AsyncConsumer(AsyncStreamSource(...))`` on ``redis.asyncio``; the effect
  and its done-mark in one ``MULTI/EXEC`` under ``WATCH``, as ``commit`` does.
* ``naive``: ``XREADGROUP >`` 8 at a time, handled on 8 threads, ``XACK``
  each; Python's default SIGTERM (the process ends at once); no claiming.

Afterwards, from Redis itself: entries never handled, entries whose effect
never happened (lost), applied more than once, still pending, handler runs
repeated (a redelivery after a kill), and the exit codes of the SIGTERMed
consumers. Everything is bounded: the roll's waits, each child's exit
(SIGKILL by PID after 15 s), the drain (40 s).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

import redis

from tests.procs.redis_roll import RollResult, roll
from tests.redis_server import RedisServer

KINDS = ("lifecycle", "asyncio", "naive")
LABELS = {"lifecycle": "lifecycle", "asyncio": "lc asyncio", "naive": "naive"}


def table(results: dict[str, RollResult]) -> str:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, values: list[object]) -> None:
        rows.append((label, [str(v) for v in values]))

    rs = [results[k] for k in KINDS if k in results]
    row("messages produced", [r.produced for r in rs])
    row("SIGTERM / SIGKILL", [f"{r.sigterms} / {r.sigkills}" for r in rs])
    row("handled at least once", [r.handled for r in rs])
    row("lost (effect never applied)", [r.lost for r in rs])
    row("effect applied exactly once", [r.effect_once for r in rs])
    row("effect applied twice or more", [r.effect_repeated for r in rs])
    row("left pending at the end", [r.pending for r in rs])
    row("never read by the group", [r.unread for r in rs])
    row("handler runs repeated", [r.handler_reruns for r in rs])
    row(
        "redeliveries skipped (dedupe)",
        [r.stats.get("consumer_duplicates", "-") if r.mode == "lifecycle" else "-" for r in rs],
    )
    row("given back at SIGTERM", [r.stats.get("given_back", "-") for r in rs])
    row("claimed (XAUTOCLAIM)", [r.stats.get("claimed", "-") for r in rs])
    row("acks that found it acked", [r.stats.get("ack_missed", "-") for r in rs])
    row("dead-lettered", [r.dead_lettered for r in rs])
    row("exit codes after SIGTERM", [",".join(str(c) for c in r.sigterm_codes) for r in rs])
    row("slowest exit after SIGTERM s", [f"{r.slowest_sigterm_exit:.2f}" for r in rs])
    row("drain after last message s", [f"{r.drained_seconds:.2f}" for r in rs])
    row("wall time s", [f"{r.seconds:.1f}" for r in rs])
    names = [LABELS[r.mode] for r in rs]
    width = max(len(label) for label, _ in rows) + 2
    cols = [max(len(k), *(len(v[i]) for _, v in rows)) + 2 for i, k in enumerate(names)]
    lines = [" " * width + "".join(k.rjust(c) for k, c in zip(names, cols, strict=True))]
    lines += [
        label.ljust(width) + "".join(v.rjust(c) for v, c in zip(values, cols, strict=True))
        for label, values in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sigterms", type=int, default=5)
    parser.add_argument("--sigkills", type=int, default=1)
    parser.add_argument("--produce-seconds", type=float, default=10.0)
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="comma-separated: " + ",".join(KINDS)
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless both lifecycle kinds lost 0"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= 100_000 or not 0 <= args.sigterms + args.sigkills <= 50:
        parser.error("--messages must be 1..100000 and --sigterms + --sigkills at most 50")
    if shutil.which("redis-server") is None:
        print("redis-server is not on PATH (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    kinds = [k for k in args.kinds.split(",") if k]
    results: dict[str, RollResult] = {}
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        version = client.info("server")["redis_version"]
        for kind in kinds:
            began = time.monotonic()
            results[kind] = roll(
                client,
                server.url,
                kind,
                messages=args.messages,
                sigterms=args.sigterms,
                sigkills=args.sigkills,
                produce_seconds=args.produce_seconds,
            )
            print(f"# {kind}: {time.monotonic() - began:.1f} s, logs in {results[kind].log_dir}")
        client.close()
    print(
        f"# redis-server {version}, redis-py {redis.__version__}, 3 consumer processes, "
        f"handlers 10-50 ms, concurrency 8"
    )
    print(table(results))
    if args.check:
        for kind in ("lifecycle", "asyncio"):
            lc = results.get(kind)
            if lc is None:
                continue
            ok = (lc.lost, lc.pending, lc.effect_repeated, lc.never_handled) == (0, 0, 0, 0)
            if not (ok and all(code == 0 for code in lc.sigterm_codes)):
                print(f"# check failed for {kind}:\n{lc.summary()}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
