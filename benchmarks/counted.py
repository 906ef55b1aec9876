"""What lifecycle adds per request, counted on a simulated CPU: the same number every run.

    python -m benchmarks.counted                   # print the table (exit code 0)
    python -m benchmarks.counted --check           # exit 1 when a target is missed
    python -m benchmarks.counted --rows wsgi,uvicorn-asgi --requests 100,300

The timed benchmarks (`benchmarks.serving_sync`, `serving_async`,
`uvicorn`, `aiohttp`) read CPU time per request on the machine as it is;
on a shared two-core virtual machine the same code reads a few
microseconds apart from round to round and from process to process (their
A/A rows show it), which is as much as the 1 µs budget they check. This
one counts instead. Each row runs the in-process request path of one of
those benchmarks, without lifecycle and with it, under valgrind's
cachegrind (``--cache-sim=yes --branch-sim=yes``, fixed cache geometry:
32 KiB 8-way L1 instruction and data caches, an 8 MiB 16-way last level,
64-byte lines; a fixed ``PYTHONHASHSEED``), which counts every instruction,
simulated cache miss and simulated branch mispredict of the process.

Per request, of each side: the counts of a run of ``N2`` requests minus
those of a run of ``N1`` (both after the same start-up, imports and
warm-up, which cancel), over ``N2 - N1``. The hash seed moves the counts
of the same code by about 1 % (which names collide in CPython's caches),
so each side is counted under three seeds and the row shown is the median
seed's, with the range of the others. They give:

* ``instr``: instructions per request;
* ``cycles``: an estimate of the cycles they take, the one KCachegrind
  shows: instructions + 10 x (L1 misses + branch mispredicts) + 100 x
  last-level misses. It weighs what instruction counts alone miss: a layer
  that adds 2 % of instructions can add more than that of cache misses and
  mispredicts (the WSGIServer row shows it);
* ``added us``: lifecycle's added cycles at the rate this machine runs the
  side without lifecycle (its CPU time per request, best of 5 rounds,
  measured outside valgrind in this run, over its estimated cycles);
* ``ratio``: cycles without over cycles with, the capacity kept.

The rows, and their targets (the timed benchmarks' own):

* ``http``: a ``BaseHTTPRequestHandler`` as the stdlib runs it against the
  class `lifecycle.HTTPServer` makes of it (lifecycle also reads the request
  with its strict parser, the faster of the two): added <= 1 µs;
* ``wsgi``: lifecycle's WSGI adapter handler bare against the same hosted by
  `lifecycle.WSGIServer` (its stop sequence's and timeouts' part): <= 1 µs;
* ``wsgi-mw-built`` / ``wsgi-mw-streamed``: a WSGI app served by the WSGI
  adapter handler bare (a server that is not lifecycle's: its environ does
  not say the request is tracked), and the same app in
  `lifecycle.WSGIMiddleware`, with a built and a streamed body: <= 1 µs;
* ``asgi-mw``: uvicorn's HTTP protocol fed keep-alive requests from memory,
  serving an ASGI app bare and in `lifecycle.ASGIMiddleware`: <= 1 µs;
* ``uvicorn-asgi`` / ``uvicorn-fastapi``: uvicorn's HTTP protocol fed
  keep-alive requests from memory, plain uvicorn's config against
  `lifecycle.uvicorn.Server`'s: ratio >= 0.98 / >= 0.99;
* ``aiohttp``: aiohttp's request handler called on prepared requests,
  directly and through `lifecycle.aiohttp.Server`'s: <= 1 µs (a ratio would
  compare with the handler alone, without aiohttp's HTTP parsing and
  protocol, which `benchmarks.aiohttp`'s ratio includes).

Needs valgrind (``apt-get install valgrind``); about 35 minutes on two cores
(3 to 10 a row: each side, each seed, two runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 50
"""Requests each side serves before the counted ones (in both runs alike)."""
DEFAULT_REQUESTS = (200, 400)
DEFAULT_SEEDS = (0, 1, 2)
ADDED_TARGET_US = 1.0
CACHE_GEOMETRY = ("--I1=32768,8,64", "--D1=32768,8,64", "--LL=8388608,16,64")
TIMED_ROUNDS = 5
PREPARED = 0
"""At least how many request objects a side prepares before serving (a child's ``--prepare``):
the larger run's count in both runs, so that preparing them cancels out too."""

# -- the request paths, one function per side ------------------------------------------------
#
# Each serves ``n`` requests and returns the CPU seconds they took (measured inside,
# as the timed benchmarks do); what it sets up before them is the same for every ``n``
# (or, for prepared request objects, for every ``n`` up to `PREPARED`).


def _http(with_lifecycle: bool, n: int) -> float:
    from benchmarks import serving_sync  # noqa: PLC0415 - a child imports what its row needs
    from lifecycle._serving.http import HTTPServer  # noqa: PLC0415

    if not with_lifecycle:
        return serving_sync._handler_run(serving_sync.Handler, None, n)
    server = HTTPServer(serving_sync.Handler)
    return serving_sync._handler_run(server._wrap_handler(), server, n)


def _wsgi(with_lifecycle: bool, n: int) -> float:
    from benchmarks import serving_sync  # noqa: PLC0415
    from lifecycle._serving.wsgi import WSGIServer  # noqa: PLC0415

    server = WSGIServer(serving_sync.wsgi_app)
    if not with_lifecycle:
        return serving_sync._handler_run(server.handler_class, None, n)
    return serving_sync._handler_run(server._wrap_handler(), server, n)


def _wsgi_mw(streamed: bool) -> Callable[[bool, int], float]:
    def side(with_lifecycle: bool, n: int) -> float:
        import lifecycle  # noqa: PLC0415
        from benchmarks import serving_sync  # noqa: PLC0415
        from lifecycle._serving.wsgi import WSGIServer  # noqa: PLC0415

        inner = serving_sync.streamed_wsgi_app if streamed else serving_sync.wsgi_app
        app = lifecycle.WSGIMiddleware(inner, lifecycle.App("bench")) if with_lifecycle else inner
        # Served by the WSGI adapter handler bare, the same wrapper on both sides.
        server = WSGIServer(serving_sync.hide_tracking(app))
        return serving_sync._handler_run(server.handler_class, None, n)

    return side


def _uvicorn(name: str, *, middleware_only: bool = False) -> Callable[[bool, int], float]:
    def side(with_lifecycle: bool, n: int) -> float:
        import uvicorn  # noqa: PLC0415

        import lifecycle  # noqa: PLC0415
        import lifecycle.uvicorn  # noqa: PLC0415
        from benchmarks import uvicorn as bench  # noqa: PLC0415

        app = bench.make_app(name)
        if with_lifecycle and middleware_only:
            wrapped = lifecycle.ASGIMiddleware(app, lifecycle.App("bench"))
            config = uvicorn.Config(wrapped, host="127.0.0.1", port=0, **bench.OPTIONS)
        elif with_lifecycle:
            server = lifecycle.uvicorn.Server(app, "127.0.0.1", 0, **bench.OPTIONS)
            lifecycle.App("bench").add(server)
            config = server.config
        else:
            config = uvicorn.Config(app, host="127.0.0.1", port=0, **bench.OPTIONS)
        return asyncio.run(bench._per_request(config, n)) * n / 1e6

    return side


def _aiohttp(with_lifecycle: bool, n: int) -> float:
    from benchmarks import aiohttp as bench  # noqa: PLC0415

    async def calls() -> float:
        plain, wrapped, requests = bench.direct_handlers(max(n, PREPARED))
        handler = wrapped if with_lifecycle else plain
        requests = requests[:n]
        began = time.thread_time()
        for request in requests:
            await handler(request)
        return time.thread_time() - began

    return asyncio.run(calls())


@attrs.frozen
class Row:
    """One comparison: a request path without lifecycle and with it, and its target."""

    label: str
    side: Callable[[bool, int], float]
    added_us: float | None = ADDED_TARGET_US  # the budget of what lifecycle adds, or
    ratio: float | None = None  # the capacity it must keep


ROWS: dict[str, Row] = {
    "http": Row("HTTPServer: handler, per request", _http),
    "wsgi": Row("WSGIServer: WSGI handler, per request", _wsgi),
    "wsgi-mw-built": Row("WSGIMiddleware in a WSGI server, built body", _wsgi_mw(streamed=False)),
    "wsgi-mw-streamed": Row("WSGIMiddleware in a WSGI server, streamed", _wsgi_mw(streamed=True)),
    "asgi-mw": Row("ASGIMiddleware in uvicorn's protocol", _uvicorn("asgi", middleware_only=True)),
    "uvicorn-asgi": Row("uvicorn protocol, ASGI hello", _uvicorn("asgi"), None, 0.98),
    "uvicorn-fastapi": Row("uvicorn protocol, FastAPI hello", _uvicorn("fastapi"), None, 0.99),
    "aiohttp": Row("aiohttp request handler (no HTTP parsing)", _aiohttp),
}

# -- counting ---------------------------------------------------------------------------------


@attrs.frozen
class Counts:
    """Per request: instructions, L1 and last-level misses, branch mispredicts."""

    instr: float
    l1_misses: float
    ll_misses: float
    mispredicts: float

    @property
    def cycles(self) -> float:
        """KCachegrind's estimate: Ir + 10 (L1 misses + mispredicts) + 100 LL misses."""
        return self.instr + 10 * (self.l1_misses + self.mispredicts) + 100 * self.ll_misses


def read_summary(text: str) -> dict[str, int]:
    """The totals of a cachegrind output file: event name -> count.

    Raises:
        ValueError: the text has no ``events:`` or no ``summary:`` line (not a
            cachegrind output file, or one of a run that did not end).
    """
    events: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            if events is None:
                break
            values = [int(v) for v in line.split()[1:]]
            return dict(zip(events, values + [0] * (len(events) - len(values)), strict=True))
    raise ValueError("not a complete cachegrind output: no 'events:' and 'summary:' lines")


def per_request(small: dict[str, int], large: dict[str, int], requests: int) -> Counts:
    """The counts one request adds: ``(large - small) / requests``."""

    def diff(*names: str) -> float:
        return sum(large.get(n, 0) - small.get(n, 0) for n in names) / requests

    return Counts(
        instr=diff("Ir"),
        l1_misses=diff("I1mr", "D1mr", "D1mw"),
        ll_misses=diff("ILmr", "DLmr", "DLmw"),
        mispredicts=diff("Bcm", "Bim"),
    )


def _count(
    row: str, with_lifecycle: bool, n: int, prepare: int, seed: int, out_dir: Path
) -> dict[str, int]:
    """One run of ``n`` requests of a side under cachegrind, with hash seed ``seed``; its totals."""
    out = out_dir / f"{row}.{int(with_lifecycle)}.{n}.{seed}.out"
    argv = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=yes",
        "--branch-sim=yes",
        *CACHE_GEOMETRY,
        f"--cachegrind-out-file={out}",
        sys.executable,
        "-m",
        "benchmarks.counted",
        "--child",
        row,
        "--with" if with_lifecycle else "--without",
        "--count",
        str(n),
        "--prepare",
        str(prepare),
    ]
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=900, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"row {row!r} under cachegrind exited {done.returncode}: {tail}")
    return read_summary(out.read_text())


@attrs.frozen
class Result:
    row: Row
    without: Counts
    with_: Counts
    base_us: float  # the side without lifecycle, timed on this machine

    @property
    def added_us(self) -> float:
        return (self.with_.cycles - self.without.cycles) / self.without.cycles * self.base_us

    @property
    def ratio(self) -> float:
        return self.without.cycles / self.with_.cycles

    @property
    def ok(self) -> bool:
        if self.row.ratio is not None:
            return self.ratio >= self.row.ratio
        assert self.row.added_us is not None
        return self.added_us <= self.row.added_us


def measure(
    names: Sequence[str], requests: tuple[int, int], seeds: Sequence[int], jobs: int
) -> list[list[Result]]:
    """Per row, a `Result` per hash seed (each side counted under each seed)."""
    small, large = requests
    # Timed first, while nothing else of this run takes the CPUs.
    bases = {
        name: min(ROWS[name].side(False, large) for _ in range(TIMED_ROUNDS)) / large * 1e6
        for name in names
    }
    with tempfile.TemporaryDirectory(prefix="counted-") as tmp, ThreadPoolExecutor(jobs) as pool:
        runs = {
            (name, with_lifecycle, n, seed): pool.submit(
                _count, name, with_lifecycle, n, large, seed, Path(tmp)
            )
            for name in names
            for seed in seeds
            for with_lifecycle in (False, True)
            for n in (small, large)
        }
        results = []
        for name in names:
            per_seed = []
            for seed in seeds:
                without, with_ = (
                    per_request(
                        runs[name, with_lifecycle, small, seed].result(),
                        runs[name, with_lifecycle, large, seed].result(),
                        large - small,
                    )
                    for with_lifecycle in (False, True)
                )
                per_seed.append(Result(ROWS[name], without, with_, bases[name]))
            results.append(per_seed)
    return results


def median_result(per_seed: Sequence[Result]) -> Result:
    """The seed's result whose ratio is the median (the lower one of an even count)."""
    ranked = sorted(per_seed, key=lambda r: r.ratio)
    return ranked[(len(ranked) - 1) // 2]


def table(
    results: Sequence[Sequence[Result]], requests: tuple[int, int], seeds: Sequence[int]
) -> str:
    lines = [
        f"cachegrind, per request: runs of {requests[1]} minus runs of {requests[0]} requests, "
        f"under hash seeds {','.join(map(str, seeds))} (the median seed's row; 'seeds': the "
        "range of added us); cycles = instr + 10 (L1 misses + mispredicts) + 100 LL misses",
        f"{'row':<44} {'instr w/o':>9} {'instr with':>10} {'cycles w/o':>10} "
        f"{'cycles with':>11} {'ratio':>6} {'added us':>8} {'seeds':>13} {'target':>8} result",
    ]
    for per_seed in results:
        r = median_result(per_seed)
        added = sorted(x.added_us for x in per_seed)
        spread = f"{added[0]:+.2f}..{added[-1]:+.2f}"
        target = f">={r.row.ratio:g}" if r.row.ratio is not None else f"<={r.row.added_us:g}us"
        lines.append(
            f"{r.row.label:<44} {r.without.instr:>9.0f} {r.with_.instr:>10.0f} "
            f"{r.without.cycles:>10.0f} {r.with_.cycles:>11.0f} {r.ratio:>6.3f} "
            f"{r.added_us:>+8.2f} {spread:>13} {target:>8} {'PASS' if r.ok else 'FAIL'}"
        )
    lines.append(
        "added us: the added cycles at this machine's rate for the side without lifecycle "
        f"(its CPU time per request, best of {TIMED_ROUNDS} rounds outside valgrind)"
    )
    return "\n".join(lines)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or any(not 0 <= v <= 4294967295 for v in seeds):
        raise argparse.ArgumentTypeError(
            f"--seeds takes hash seeds (0 to 4294967295), comma-separated, as 0,1,2; got {text!r}"
        )
    return seeds


def _requests(text: str) -> tuple[int, int]:
    try:
        small, large = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--requests takes two counts, smaller first, as 200,400; got {text!r}"
        ) from None
    if not 0 < small < large:
        raise argparse.ArgumentTypeError(
            f"--requests takes two counts, smaller first, as 200,400; got {text!r}"
        )
    return small, large


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--rows", default=",".join(ROWS), help="rows to run (comma-separated)")
    parser.add_argument(
        "--requests", type=_requests, default=DEFAULT_REQUESTS, help="the two run sizes, N1,N2"
    )
    parser.add_argument(
        "--seeds", type=_seeds, default=DEFAULT_SEEDS, help="hash seeds to count under (0,1,2)"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once")
    parser.add_argument("--child", choices=list(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--with", dest="with_lifecycle", action="store_true", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--without", dest="with_lifecycle", action="store_false", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:  # under valgrind: warm up, then the counted requests
        global PREPARED  # the child's one setting, read by its side
        PREPARED = args.prepare
        side = ROWS[args.child].side
        side(args.with_lifecycle, WARMUP)
        side(args.with_lifecycle, args.count)
        return 0
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    results = measure(names, args.requests, args.seeds, max(1, args.jobs))
    print(table(results, args.requests, args.seeds))
    missed = [r.row.label for r in map(median_result, results) if not r.ok]
    if args.check and missed:
        print(f"FAIL: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
