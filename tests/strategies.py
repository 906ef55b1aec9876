"""Hypothesis strategies for the pure core: dependency graphs, scripts, whole cases.

Durations and timeouts are whole numbers (as floats), so that the simulated
clock adds exactly and ties — a call ending exactly at its deadline, two
components finishing at once — are common rather than never. Whether a
component is critical is drawn at random for every component; so are the
lag of each shutdown request behind its arrival and the slips of the clock
(see `tests.sim`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Literal, cast

import attrs
from hypothesis import strategies as st

from lifecycle._core.graph import analyze
from lifecycle._core.scheduler import NodeSpec
from tests.sim import (
    CancelAs,
    OnCancel,
    RunEnds,
    RunScript,
    Script,
    SimResult,
    StartScript,
    StopOutcome,
    StopScript,
    simulate,
)

__all__ = [
    "FAULTS",
    "Case",
    "RestartCase",
    "RunLife",
    "cases",
    "clean_cases",
    "declarations",
    "one_fault_cases",
]


@st.composite
def declarations(draw: st.DrawFn, max_nodes: int = 60) -> dict[str, tuple[str, ...]]:
    """A random DAG as ``{name: dependencies}`` in a random registration order.

    A hidden topological order is drawn first and every edge points from a
    later name to an earlier one, so there is never a cycle. ``max_deps``
    sets the fan-in and ``window`` how far back a dependency may lie: a
    small window makes long chains (deep), a large one wide, shallow graphs.
    """
    n = draw(st.integers(0, max_nodes))
    max_deps = draw(st.integers(0, 4))
    window = draw(st.integers(1, max(1, n)))
    names = [f"c{i}" for i in range(n)]
    deps: dict[str, tuple[str, ...]] = {}
    for i, name in enumerate(names):
        candidates = names[max(0, i - window) : i]
        k = draw(_range(0, min(max_deps, len(candidates))))
        deps[name] = tuple(draw(_subset(tuple(candidates), k))) if k else ()
    registration = draw(_permutation(tuple(names)))
    return {name: deps[name] for name in registration}


# Strategies are cached by their arguments: hypothesis validates and analyses
# each strategy object on first use, which cost more than the draws when a new
# one was built for every node and pick (the same draws from the same
# distributions; 13-20% less CPU per case).
@functools.cache
def _range(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


@functools.cache
def _subset(candidates: tuple[str, ...], k: int) -> st.SearchStrategy[list[str]]:
    """``k`` distinct names of ``candidates``, in drawn order."""
    return st.lists(st.sampled_from(candidates), min_size=k, max_size=k, unique=True)


@functools.cache
def _permutation(names: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    return st.permutations(names)


@functools.cache
def _ints(lo: int, hi: int) -> st.SearchStrategy[float]:
    # Cached: hypothesis validates each strategy object once, and cases draw thousands.
    return st.integers(lo, hi).map(float)


@functools.cache
def _choice(goods: tuple[str, ...], bads: tuple[str, ...], odds: int) -> st.SearchStrategy[str]:
    # A bad value has weight 1, each good one ``odds``: bad ones stay rare.
    return st.sampled_from(list(goods) * odds + list(bads))


_BIASED_TRUE = st.sampled_from([True, True, True, False])
_BIASED_FALSE = st.sampled_from([False, False, True])
_CANCEL_DELAY = st.none() | _ints(0, 10)

_Outcome = Literal["ok", "raises", "hangs"]
# How an aborted start ends: mostly a plain Cancelled, sometimes a task group's.
_CANCEL_AS = st.sampled_from(["cancelled", "cancelled", "group", "mixed"])


def _component(
    draw: st.DrawFn, name: str, start_odds: int, later_odds: int
) -> tuple[NodeSpec, Script]:
    """One component's spec and script.

    Every way to fail is drawn with probability about ``1 / odds``, or never
    when the odds are 0: ``start_odds`` for starts (raises, hangs, a timeout
    shorter than the call), ``later_odds`` for runs and stops (a run ending
    on its own or misbehaving once cancelled — raising, or ending in a task
    group mixing a cancellation with a crash —, a stop raising, timing out
    like a client socket, cutting requests, or hanging, a stop_timeout
    shorter than the phase). A run honouring its token may end in a group of
    cancellations, which is no failure. Calls take 0-20 and a stop phase
    (waiting for run, then stop) up to 40, so generous timeouts never overrun.
    """

    def pick(odds: int, goods: tuple[str, ...], *bads: str) -> str:
        if not odds:
            return draw(_choice(goods, (), 1)) if len(goods) > 1 else goods[0]
        return draw(_choice(goods, bads, odds))

    has_start = draw(_BIASED_TRUE)
    has_run = draw(_BIASED_FALSE)
    has_stop = draw(_BIASED_TRUE)
    critical = draw(st.booleans())
    tight_start = has_start and pick(start_odds, ("no",), "yes") == "yes"
    tight_stop = (has_run or has_stop) and pick(later_odds, ("no",), "yes") == "yes"
    start_timeout = draw(_ints(0, 20) if tight_start else _ints(21, 60))
    stop_timeout = draw(_ints(0, 40) if tight_stop else _ints(41, 60))
    # Draw only what the component has: fewer choices, faster generation.
    start, run, stop = StartScript(), RunScript(), StopScript()
    if has_start:
        start = StartScript(
            duration=draw(_ints(0, 20)),
            outcome=cast(_Outcome, pick(start_odds, ("ok",), "raises", "hangs")),
            cancel_delay=draw(_CANCEL_DELAY),
            cancel_as=cast(CancelAs, draw(_CANCEL_AS)),
        )
    if has_run:
        ends = cast(RunEnds, pick(later_odds, ("cancelled",), "returns", "raises"))
        run = RunScript(
            ends=ends,
            at=draw(_ints(0, 60)) if ends != "cancelled" else 0.0,
            on_cancel=cast(
                OnCancel,
                pick(
                    later_odds,
                    ("returns", "cancelled", "cancelled group"),
                    "raises",
                    "mixed group",
                    "hangs",
                ),
            ),
            return_delay=draw(_ints(0, 20)),
        )
    if has_stop:
        stop = StopScript(
            duration=draw(_ints(0, 20)),
            outcome=cast(
                StopOutcome,
                pick(later_odds, ("ok",), "raises", "hangs", "times out", "cut", "cut group"),
            ),
        )
    spec = NodeSpec(
        name,
        start_timeout=start_timeout,
        stop_timeout=stop_timeout,
        critical=critical,
        has_start=has_start,
        has_run=has_run,
        has_stop=has_stop,
    )
    return spec, Script(start, run, stop)


@attrs.frozen
class Case:
    """One simulated app: its declaration, scripts, shutdown settings and clock quirks."""

    declared: Mapping[str, tuple[str, ...]]
    specs: tuple[NodeSpec, ...]
    scripts: Mapping[str, Script]
    shutdown_timeout: float
    drain_delay: float = 0.0
    shutdown_at: tuple[float, ...] = ()
    request_lags: tuple[float | None, ...] = ()
    slips: tuple[float, ...] = ()

    def run(self) -> SimResult:
        """Simulate it (see `tests.sim.simulate`)."""
        return simulate(
            analyze(self.declared),
            self.specs,
            self.scripts,
            shutdown_timeout=self.shutdown_timeout,
            drain_delay=self.drain_delay,
            shutdown_at=self.shutdown_at,
            request_lags=self.request_lags,
            slips=self.slips,
        )


_FAULTS = st.sampled_from([0, 0, 1, 1, 2, 3])
_DENSE_ODDS = st.sampled_from([0, 1, 2, 4, 8])
_HOW_MANY_REQUESTS = st.sampled_from([0, 1, 1, 1, 1, 2])
_MOMENT = _ints(0, 60) | _ints(0, 1500) | _ints(0, 1500)
_SHUTDOWN_TIMEOUT = _ints(0, 300) | _ints(300, 3000)
# How long before its delivery a request arrived: none given, a little, more
# than a whole shutdown_timeout, or a stamp after the delivery (negative).
_LAG = st.none() | _ints(0, 5) | _ints(0, 3000) | _ints(-5, -1)
# The clock slipping back at a repeated instant: mostly not, by a little or a lot.
_SLIPS = st.lists(st.sampled_from([0.0, 0.0, 1.0, 3.0, 1000.0]), max_size=6).map(tuple)


@st.composite
def cases(draw: st.DrawFn, max_nodes: int = 60, *, dense: bool = False) -> Case:
    """Any case: random graph, faults, timeouts, drain and shutdown moments.

    About 0-3 things go wrong in starts, and 0-3 in runs and stops, per app;
    ``dense`` instead gives every way to fail odds from 1:1 to 1:8 (meant for
    small graphs, where failures then meet often). The shutdown may come
    during startup, while running, twice, or never (the app then ends only
    if a critical ``run`` ends); each request may lag behind its arrival,
    and the clock may slip back.
    """
    declared = draw(declarations(max_nodes))
    if dense:
        start_odds, later_odds = draw(_DENSE_ODDS), draw(_DENSE_ODDS)
    else:
        size = 3 * max(1, len(declared))
        start_faults, later_faults = draw(_FAULTS), draw(_FAULTS)
        start_odds = size // start_faults if start_faults else 0
        later_odds = size // later_faults if later_faults else 0
    specs, scripts = [], {}
    for name in declared:
        spec, script = _component(draw, name, start_odds, later_odds)
        specs.append(spec)
        scripts[name] = script
    count = draw(_HOW_MANY_REQUESTS)
    return Case(
        declared,
        tuple(specs),
        scripts,
        shutdown_timeout=draw(_SHUTDOWN_TIMEOUT),
        drain_delay=draw(_ints(0, 30)),
        shutdown_at=tuple(draw(_MOMENT) for _ in range(count)),
        request_lags=tuple(draw(_LAG) for _ in range(count)),
        slips=draw(_SLIPS),
    )


@st.composite
def clean_cases(draw: st.DrawFn, max_nodes: int = 60) -> Case:
    """No failures, generous timeouts, a shutdown requested once all started.

    The request may lag (up to 60, far inside the 10 000 s timeout) and the
    clock may slip back: neither may change a clean shutdown.
    """
    declared = draw(declarations(max_nodes))
    specs, scripts = [], {}
    for name in declared:
        spec, script = _component(draw, name, 0, 0)
        specs.append(spec)
        scripts[name] = script
    # The longest start chain is at most 60 * 20 = 1200.
    return Case(
        declared,
        tuple(specs),
        scripts,
        shutdown_timeout=10_000.0,
        drain_delay=draw(_ints(0, 30)),
        shutdown_at=(draw(_ints(1201, 1300)),),
        request_lags=(draw(st.none() | _ints(-5, 60)),),
        slips=draw(_SLIPS),
    )


FAULTS = (
    "start raises",
    "start hangs",
    "start overruns",
    "run returns",
    "run raises",
    "run raises when cancelled",
    "run raises a mixed group when cancelled",
    "run hangs when cancelled",
    "stop raises",
    "stop times out",
    "stop is cut",
    "stop is cut in a group",
    "stop hangs",
    "stop overruns",
)


def _inject(fault: str, spec: NodeSpec, script: Script, slack: float) -> tuple[NodeSpec, Script]:
    """Give one component one fault; ``slack`` (>= 1) sizes timeouts and moments."""
    evolve = attrs.evolve
    phase, _, how = fault.partition(" ")
    if phase == "start":
        spec = evolve(spec, has_start=True)
        if how == "overruns":
            start = evolve(script.start, duration=spec.start_timeout + slack)
        else:
            start = evolve(script.start, outcome=how)
        return spec, evolve(script, start=start)
    if phase == "run":
        spec = evolve(spec, has_run=True)
        run = {
            "returns": RunScript(ends="returns", at=slack),
            "raises": RunScript(ends="raises", at=slack),
            "raises when cancelled": RunScript(on_cancel="raises"),
            "raises a mixed group when cancelled": RunScript(on_cancel="mixed group"),
            "hangs when cancelled": RunScript(on_cancel="hangs"),
        }[how]
        return spec, evolve(script, run=run)
    spec = evolve(spec, has_stop=True)
    if how == "overruns":
        stop = evolve(script.stop, duration=spec.stop_timeout + slack)
    else:
        outcome = {"is cut": "cut", "is cut in a group": "cut group"}.get(how, how)
        stop = evolve(script.stop, outcome=outcome)
    return spec, evolve(script, stop=stop)


@st.composite
def one_fault_cases(draw: st.DrawFn, max_nodes: int = 20) -> Case:
    """A clean case with exactly one fault in one component (of `FAULTS`).

    One fault alone decides the exit code and the states, so the oracle is
    tested where many faults together would hide a wrong answer. The
    shutdown comes during startup or after it, and its timeout may be short.
    """
    case = draw(clean_cases(max_nodes))
    if not case.specs:
        return case
    index = draw(st.integers(0, len(case.specs) - 1))
    fault = draw(st.sampled_from(FAULTS))
    slack = draw(_ints(1, 500))
    spec = case.specs[index]
    spec, script = _inject(fault, spec, case.scripts[spec.name], slack)
    specs = (*case.specs[:index], spec, *case.specs[index + 1 :])
    return attrs.evolve(
        case,
        specs=specs,
        scripts={**case.scripts, spec.name: script},
        shutdown_timeout=draw(_ints(1, 100) | st.just(10_000.0)),
        shutdown_at=(draw(_ints(0, 500)),),
    )


# -- restarts -------------------------------------------------------------------------


@attrs.frozen
class RunLife:
    """One run of a restartable component: it ends on its own after ``duration``."""

    duration: float
    raises: bool


@attrs.frozen
class RestartCase:
    """An app whose run-style components crash or return on a schedule, under restart policies.

    ``lives[name]`` are the successive runs of ``name`` that end on their
    own; once they are used up, a run lasts until its token is cancelled.
    ``shutdown_at`` is when the shutdown is requested (None: never).
    """

    declared: Mapping[str, tuple[str, ...]]
    specs: tuple[NodeSpec, ...]
    lives: Mapping[str, tuple[RunLife, ...]]
    shutdown_at: float | None
    shutdown_timeout: float
    drain_delay: float
    seed: int


_LIVES = st.lists(st.builds(RunLife, _ints(0, 15), st.booleans()), max_size=8)
_MODE = st.sampled_from(["never", "on-failure", "always", "always", "on-failure"])
