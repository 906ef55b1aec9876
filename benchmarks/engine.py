"""Speed of the pure core: graph analysis and a whole simulated lifecycle.

Run from the repository root::

    python -m benchmarks.engine [--check] [--repeat N] [--seed S]

Prints one row per measurement with its target and PASS/FAIL; ratios are
taken between measurements of the same run, so they hold on any machine.
``--check`` exits 1 when a target is missed. The other rows are contrast,
not targets: graphlib's plain topological sort (it does less: no messages,
no layers, no states, no timers), and a floor — one dict lookup per edge,
which any name-based analysis does — whose 10k -> 100k ratio shows what the
machine's caches alone cost at that size.
"""

from __future__ import annotations

import argparse
import gc
import graphlib
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from lifecycle._core.graph import Graph, analyze
from lifecycle._core.scheduler import (
    Action,
    AppStarted,
    CancelRun,
    CancelStart,
    Finished,
    NodeSpec,
    RunComponent,
    Scheduler,
    StartComponent,
    StopComponent,
)
from lifecycle._core.states import ExitCode

SMALL, LARGE, EDGES_PER_NODE = 10_000, 100_000, 3


def random_dag(n: int, seed: int, edges_per_node: int = EDGES_PER_NODE) -> dict[str, list[str]]:
    """``n`` components with about ``edges_per_node * n`` edges, registered in random order.

    Each component depends on up to ``edges_per_node`` earlier ones in a
    hidden order, mostly recent ones (long chains) and some anywhere (wide).
    """
    rng = random.Random(seed)
    names = [f"c{i}" for i in range(n)]
    declared: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        k = min(i, edges_per_node)
        picks = {
            rng.randrange(max(0, i - 50), i) if rng.random() < 0.7 else rng.randrange(i)
            for _ in range(k)
        }
        declared[name] = [names[j] for j in picks]
    order = names[:]
    rng.shuffle(order)
    return {name: declared[name] for name in order}


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """The fastest of ``repeat`` runs of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def lookup_floor(declared: Mapping[str, Iterable[str]]) -> int:
    """One dict lookup per edge: the least any analysis by name must do."""
    found = 0
    for deps in declared.values():
        for dep in deps:
            found += dep in declared
    return found


def run_lifecycle(graph: Graph, specs: Sequence[NodeSpec]) -> ExitCode:
    """Start every component, request shutdown, stop them all; every call answers at once."""
    sched = Scheduler(graph, specs, shutdown_timeout=60.0)
    pending: deque[Action] = deque(sched.begin(0.0))
    now = 0.0
    exit_code: ExitCode | None = None
    while pending:
        action = pending.popleft()
        if isinstance(action, StartComponent):
            pending.extend(sched.start_finished(action.name, now))
        elif isinstance(action, AppStarted):
            now = 1.0
            pending.extend(sched.request_shutdown(now, "benchmark"))
        elif isinstance(action, CancelRun):
            pending.extend(sched.run_finished(action.name, now))
        elif isinstance(action, StopComponent):
            pending.extend(sched.stop_finished(action.name, now))
        elif isinstance(action, Finished):
            exit_code = action.exit_code
        else:
            assert isinstance(action, (RunComponent, CancelStart))
    assert exit_code is ExitCode.OK, exit_code
    return exit_code


def graphlib_lifecycle(declared: Mapping[str, Iterable[str]]) -> None:
    """The same start and reverse stop waves with graphlib alone (no states, no timers)."""
    starting = graphlib.TopologicalSorter(declared)
    starting.prepare()
    while starting.is_active():
        starting.done(*starting.get_ready())
    users: dict[str, list[str]] = {name: [] for name in declared}
    for name, deps in declared.items():
        for dep in deps:
            users[dep].append(name)
    stopping = graphlib.TopologicalSorter(users)
    stopping.prepare()
    while stopping.is_active():
        stopping.done(*stopping.get_ready())


@attrs.frozen
class Row:
    """One line of the table."""

    name: str
    seconds: float
    target: str
    ok: bool | None  # None: no target (a baseline)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms"


def measure(repeat: int, seed: int) -> list[Row]:
    small = random_dag(SMALL, seed)
    large = random_dag(LARGE, seed + 1)
    small_edges = sum(len(d) for d in small.values())
    large_edges = sum(len(d) for d in large.values())

    t_small = best_of(repeat, lambda: analyze(small))
    t_large = best_of(max(1, repeat // 2), lambda: analyze(large))
    ratio = t_large / t_small

    graph = analyze(small)
    rng = random.Random(seed)
    specs = [
        NodeSpec(name, 10.0, 10.0, has_run=rng.random() < 0.3, has_stop=rng.random() < 0.8)
        for name in graph.order
    ]
    t_life = best_of(repeat, lambda: run_lifecycle(graph, specs))

    def topo(declared: Mapping[str, Iterable[str]]) -> tuple[str, ...]:
        return tuple(graphlib.TopologicalSorter(declared).static_order())

    t_topo = best_of(repeat, lambda: topo(small))
    t_topo_large = best_of(max(1, repeat // 2), lambda: topo(large))
    t_floor = best_of(repeat, lambda: lookup_floor(small))
    t_floor_large = best_of(max(1, repeat // 2), lambda: lookup_floor(large))
    t_topo_life = best_of(repeat, lambda: graphlib_lifecycle(small))
    return [
        Row(
            f"analyze() {SMALL:,} components / {small_edges:,} edges",
            t_small,
            "< 100 ms",
            t_small < 0.100,
        ),
        Row(
            f"analyze() {LARGE:,} components / {large_edges:,} edges",
            t_large,
            f"<= 12x the 10k time (is {ratio:.1f}x)",
            ratio <= 12.0,
        ),
        Row(
            f"Scheduler start+shutdown, {SMALL:,} components",
            t_life,
            "< 500 ms",
            t_life < 0.500,
        ),
        Row(f"baseline: graphlib start+stop waves, {SMALL:,}", t_topo_life, "contrast", None),
        Row(f"baseline: graphlib static_order(), {SMALL:,}", t_topo, "contrast", None),
        Row(
            f"baseline: graphlib static_order(), {LARGE:,}",
            t_topo_large,
            f"contrast ({t_topo_large / t_topo:.1f}x its 10k)",
            None,
        ),
        Row(f"floor: a dict lookup per edge, {SMALL:,}", t_floor, "contrast", None),
        Row(
            f"floor: a dict lookup per edge, {LARGE:,}",
            t_floor_large,
            f"contrast ({t_floor_large / t_floor:.1f}x its 10k)",
            None,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (best kept)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random graphs")
    args = parser.parse_args(argv)

    rows = measure(args.repeat, args.seed)
    width = max(len(row.name) for row in rows)
    print(f"{'measurement':<{width}}  {'best':>12}  {'target':<34} result")
    for row in rows:
        result = "-" if row.ok is None else ("PASS" if row.ok else "FAIL")
        print(f"{row.name:<{width}}  {fmt_ms(row.seconds):>12}  {row.target:<34} {result}")
    failed = [row.name for row in rows if row.ok is False]
    if args.check and failed:
        print(f"missed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
