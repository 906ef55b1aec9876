"""Signals and exit codes, in real child processes sent real signals.

Each test starts ``tests/procs/app_child.py`` (or ``busy_child.py``, or an
example) with the interpreter running the tests, reads its JSON-line log
from the stdout pipe to synchronise (never a sleep to wait for something to
happen), sends signals with ``os.kill`` and asserts the exit code, which components were
stopped, in which order, what was logged, and that the process ended: a child
that outlives its bound is killed by PID and the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "procs" / "app_child.py"
BUSY_CHILD = ROOT / "tests" / "procs" / "busy_child.py"
ITERATIONS = 20
"""Signals sent to one busy child, one per fresh app: a hang in any of them fails the test."""
ITERATION_BOUND = 10.0
"""Seconds one busy iteration may take from its SIGTERM to its report (a hang detector)."""
BOUND = 30.0
"""Seconds: the most any wait on a child may take before the test fails (a hang
detector, generous for loaded CI machines; passing tests never wait for it)."""
GRACE = 1.0
"""The runners' default signal_grace: repeats within it are coalesced."""
RUNNERS = ["thread", "asyncio"]
ALL = ("db", "cache", "api")


def line_of(path: Path, marker: str) -> int:
    found = [
        i for i, t in enumerate(path.read_text().splitlines(), 1) if t.rstrip().endswith(marker)
    ]
    assert len(found) == 1, marker
    return found[0]


class Child:
    """A child process whose stdout is a stream of JSON events."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                try:
                    event = json.loads(line)
                except ValueError:
                    self.raw.append(line)
                else:
                    self.events.append(event)
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def describe(self) -> str:
        tail = [json.dumps(e)[:300] for e in self.events[-25:]]
        return (
            f"argv={self.argv}\n--- last events:\n"
            + "\n".join(tail)
            + "\n--- raw stdout:\n"
            + "".join(self.raw[-20:])
            + "\n--- stderr:\n"
            + "".join(self.stderr[-40:])
        )

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = BOUND
    ) -> dict[str, Any]:
        """The first event matching ``predicate``, waiting for it (bounded)."""

        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if predicate(e)), None)

        with self._cond:
            ok = self._cond.wait_for(
                lambda: found() is not None or self.proc.poll() is not None, timeout
            )
            event = found()
        assert ok, f"event not seen in time\n{self.describe()}"
        assert event is not None, f"the child exited first\n{self.describe()}"
        return event

    def wait_call(self, what: str, name: str) -> dict[str, Any]:
        return self.wait_for(
            lambda e: e["event"] == "call" and e["what"] == what and e["component"] == name
        )

    def wait_started(self) -> None:
        self.wait_for(lambda e: e["event"] == "app started")

    def kill(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def exit_after(self, signum: int, timeout: float = BOUND) -> tuple[int, float]:
        """Send ``signum``; the exit code and the seconds from the signal to the exit."""
        sent = time.monotonic()
        self.kill(signum)
        code = self.finish(timeout)
        return code, time.monotonic() - sent

    def finish(self, timeout: float = BOUND) -> int:
        """Wait for the exit (bounded; on overrun kill by PID and fail); return the code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the child did not exit within {timeout}s; killed it\n{self.describe()}")
        for reader in self._readers:
            reader.join(BOUND)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    # -- what happened ------------------------------------------------------

    def calls(self, what: str) -> list[str]:
        return [e["component"] for e in self.events if e["event"] == "call" and e["what"] == what]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    def summary(self) -> dict[str, Any]:
        (summary,) = self.named("shutdown summary")
        return summary

    def assert_stopped_once(self, names: tuple[str, ...], *, never: tuple[str, ...] = ()) -> None:
        """Each of ``names`` had stop called exactly once; ``never`` not at all."""
        stops = self.calls("stop")
        for name in names:
            assert stops.count(name) == 1, f"{name}: {stops}\n{self.describe()}"
        for name in never:
            assert name not in stops, f"{name} was stopped: {stops}"

    def assert_before(self, first: str, then: str, what: str = "stop") -> None:
        order = self.calls(what)
        assert order.index(first) < order.index(then), order


@pytest.fixture
def child() -> Iterator[Callable[..., Child]]:
    made: list[Child] = []

    def spawn(runner: str, scenario: str) -> Child:
        c = Child([sys.executable, "-m", "tests.procs.app_child", runner, scenario])
        made.append(c)
        return c

    yield spawn
    for c in made:
        c.close()


@pytest.fixture
def edge() -> Iterator[Callable[..., Child]]:
    """Spawns ``python -m tests.procs.edge_child SCENARIO RUNNER``."""
    made: list[Child] = []

    def spawn(scenario: str, runner: str = "thread") -> Child:
        c = Child([sys.executable, "-m", "tests.procs.edge_child", scenario, runner])
        made.append(c)
        return c

    yield spawn
    for c in made:
        c.close()


def crashes(c: Child) -> list[dict[str, Any]]:
    """Events saying the runtime itself failed (none is expected, ever)."""
    return [e for e in c.events if "crashed" in e["event"] or "this is a bug" in e["event"]]


def assert_clean_reverse_order(c: Child) -> None:
    """api, then cache, then db; the worker's run ended before db stopped; once each."""
    c.assert_stopped_once(ALL)
    c.assert_before("api", "cache")
    c.assert_before("cache", "db")
    calls = [(e["what"], e["component"]) for e in c.events if e["event"] == "call"]
    assert calls.index(("run-end", "worker")) < calls.index(("stop", "db")), calls
    assert c.calls("stop")[-1] == "db"


# -- the matrix -------------------------------------------------------------------


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_in_reverse_order(child, runner, signum):
    """SIGTERM or SIGINT: a graceful shutdown in reverse order, each stop once, exit 0."""
    c = child(runner, "clean")
    c.wait_started()
    c.kill(signum)
    assert c.finish() == 0, c.describe()
    assert_clean_reverse_order(c)
    assert c.summary()["reason"] == f"signal {signal.Signals(signum).name}"
    assert [e["to_state"] for e in c.named("app transition")] == [
        "STARTING", "RUNNING", "DRAINING", "STOPPING", "STOPPED",
    ]  # fmt: skip


@pytest.mark.realtime
@pytest.mark.parametrize("runner", RUNNERS)
def test_second_signal_forces_exit_with_stacks_despite_stuck_threads(child, runner):
    """A 2nd SIGTERM past the grace exits 143 within 1 s, naming the stuck stop and its line."""
    c = child(runner, "force")
    c.wait_started()
    first = time.monotonic()
    c.kill(signal.SIGTERM)
    c.wait_call("stop", "api")  # stuck there, with a non-daemon user thread alive
    assert c.proc.poll() is None
    time.sleep(max(0.0, first + GRACE + 0.2 - time.monotonic()))  # the grace is the behaviour
    second = time.monotonic()
    c.kill(signal.SIGTERM)
    code = c.finish()
    took = time.monotonic() - second
    assert code == 128 + signal.SIGTERM, c.describe()
    assert took < 1.0, f"forced exit took {took:.2f}s"
    # On asyncio the stuck stop blocks the loop, so the worker cannot see its
    # cancellation either: it is truthfully reported as still running too.
    still = {
        (e["component"], e["phase"]): e for e in c.named("forced exit: component still running")
    }
    assert set(still) - {("worker", "run")} == {("api", "stop")}
    assert runner == "asyncio" or len(still) == 1
    still_stop = still[("api", "stop")]
    marker = "# <force-sync>" if runner == "thread" else "# <force-loop>"
    assert f'"{CHILD}", line {line_of(CHILD, marker)}' in still_stop["stack"], still_stop["stack"]
    (forced,) = c.named("forced exit")
    assert forced["exit_code"] == 143
    assert sorted(forced["still_running"]) == sorted(f"{n}.{p}" for n, p in still)
    # No more user code: the dependencies of the stuck component were not stopped.
    assert c.calls("stop") == ["api"]
    assert not c.named("shutdown summary")


@pytest.mark.parametrize("runner", RUNNERS)
def test_signal_during_startup_aborts_the_start(child, runner):
    """SIGTERM while a start runs: its token is cancelled, what started stops; exit 0."""
    c = child(runner, "startup_signal")
    c.wait_call("start", "slow")
    c.kill(signal.SIGTERM)
    assert c.finish() == 0, c.describe()
    assert "api" not in c.calls("start")
    c.assert_stopped_once(("cache", "db"), never=("slow", "api"))
    c.assert_before("cache", "db")
    assert c.summary()["components"]["slow"]["state"] == "failed"
    assert not c.named("app started")


@pytest.mark.parametrize("runner", RUNNERS)
def test_start_failure_rolls_back(child, runner):
    """A start that raises: what started stops in reverse, the rest never starts; exit 1."""
    c = child(runner, "start_failure")
    assert c.finish() == 1, c.describe()
    assert "api" not in c.calls("start")
    c.assert_stopped_once(("db",), never=("cache", "api"))
    (raised,) = c.named("start() raised")
    assert raised["component"] == "cache"
    assert "RuntimeError: boom" in raised["exception"]
    assert c.summary()["components"]["cache"]["state"] == "failed"


@pytest.mark.realtime
@pytest.mark.parametrize("runner", RUNNERS)
def test_start_timeout_abandons_and_rolls_back(child, runner):
    """A start past start_timeout is abandoned with its stack; rollback; exit 1, promptly."""
    c = child(runner, "start_timeout")
    assert c.finish() == 1, c.describe()
    c.assert_stopped_once(("cache", "db"), never=("slow", "api"))
    (stuck,) = c.named("component stuck")
    assert (stuck["component"], stuck["phase"]) == ("slow", "start")
    marker = "# <stuck-sync>" if runner == "thread" else "# <stuck-async>"
    assert f'"{CHILD}", line {line_of(CHILD, marker)}' in stuck["stack"], stuck["stack"]
    assert c.summary()["components"]["slow"]["timed_out"] == "start"


@pytest.mark.parametrize("runner", RUNNERS)
def test_stop_raising_fails_but_the_rest_stop(child, runner):
    """A stop that raises is logged; its dependencies still stop; exit 1."""
    c = child(runner, "stop_raises")
    c.wait_started()
    c.kill(signal.SIGTERM)
    assert c.finish() == 1, c.describe()
    assert_clean_reverse_order(c)
    (raised,) = c.named("stop() raised")
    assert raised["component"] == "cache"
    assert c.summary()["components"]["cache"]["state"] == "failed"


@pytest.mark.realtime
@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("scenario", ["stop_overrun", "stop_stubborn"])
def test_stop_overrun_is_abandoned_with_its_stack(child, runner, scenario):
    """A stop past stop_timeout (even one swallowing cancellation) is abandoned; exit 3."""
    c = child(runner, scenario)
    c.wait_started()
    c.kill(signal.SIGTERM)
    assert c.finish() == 3, c.describe()
    c.assert_stopped_once(ALL)
    assert "api" not in c.calls("stopped")
    c.assert_before("api", "cache")
    (stuck,) = c.named("component stuck")
    assert (stuck["component"], stuck["phase"]) == ("api", "stop")
    if scenario == "stop_stubborn":
        marker = "# <stubborn>"
    else:
        marker = "# <stuck-sync>" if runner == "thread" else "# <stuck-async>"
    assert f'"{CHILD}", line {line_of(CHILD, marker)}' in stuck["stack"], stuck["stack"]
    assert c.summary()["components"]["api"]["timed_out"] == "stop"


@pytest.mark.parametrize("runner", RUNNERS)
def test_critical_run_crash_stops_the_app(child, runner):
    """A critical worker raising shuts the app down in order; exit 1."""
    c = child(runner, "run_crash_critical")
    c.wait_started()
    c.send("crash")
    assert c.finish() == 1, c.describe()
    c.assert_stopped_once(ALL)
    c.assert_before("api", "cache")
    c.assert_before("cache", "db")
    assert "critical component 'worker' failed" in c.summary()["reason"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_non_critical_run_crash_keeps_serving(child, runner):
    """A non-critical worker raising is reported; the app serves on until SIGTERM; exit 0."""
    c = child(runner, "run_crash_noncritical")
    c.wait_started()
    c.send("crash")
    c.wait_for(lambda e: e.get("component") == "worker" and e.get("to_state") == "FAILED")
    assert c.proc.poll() is None
    assert not c.calls("stop")
    c.kill(signal.SIGTERM)
    assert c.finish() == 0, c.describe()
    c.assert_stopped_once(ALL)
    assert c.summary()["components"]["worker"]["state"] == "failed"


@pytest.mark.parametrize("runner", RUNNERS)
def test_signal_storm_is_one_graceful_shutdown(child, runner):
    """100 SIGTERMs in a burst: one graceful shutdown, each stop once, exit 0."""
    c = child(runner, "storm")
    c.wait_started()
    began = time.monotonic()
    for _ in range(10):  # ten bursts of ten, spread over a few tens of ms
        for _ in range(10):
            c.kill(signal.SIGTERM)
        time.sleep(0.002)
    assert time.monotonic() - began < GRACE * 0.8, "the storm outlasted the grace"
    assert c.finish() == 0, c.describe()
    assert_clean_reverse_order(c)
    assert len([e for e in c.named("app transition") if e["to_state"] == "DRAINING"]) == 1
    assert not c.named("forced exit")
    assert len(c.named("signal received")) == 1
    # The first repeat is logged with its hint; the rest of the storm as one count.
    assert len(c.named("repeated signal ignored")) == 1, "the repeats were not rate-limited"
    counted = c.named("repeated signals ignored")
    assert len(counted) <= 1
    assert all(e["count"] >= 2 for e in counted)


@pytest.mark.parametrize("runner", RUNNERS)
def test_signals_are_logged_off_the_signal_path_with_how_to_force(child, runner):
    """The first signal is logged with how to force the exit; a repeat in the grace as ignored."""
    c = child(runner, "held_stop")  # api's stop returns on "release": the app outlasts the repeat
    c.wait_started()
    c.kill(signal.SIGTERM)
    first = c.wait_for(lambda e: e["event"] == "signal received")
    c.kill(signal.SIGINT)
    repeat = c.wait_for(lambda e: e["event"] == "repeated signal ignored")
    c.send("release")
    assert c.finish() == 0, c.describe()
    assert first["signal"] == "SIGTERM"
    assert "send it again after 1s to force the exit" in first["hint"]
    assert repeat["signal"] == "SIGINT"
    assert 0 <= repeat["seconds_since_first"] < GRACE
    assert "to force the exit" in repeat["hint"]
    assert c.summary()["reason"] == "signal SIGTERM"


@pytest.mark.parametrize("runner", RUNNERS)
def test_shutdown_from_a_non_main_thread(child, runner):
    """request_shutdown from another thread (stdin reader) stops cleanly; exit 0."""
    c = child(runner, "clean")
    c.wait_started()
    c.send("stop")
    assert c.finish() == 0, c.describe()
    assert_clean_reverse_order(c)
    assert c.summary()["reason"] == "stdin: stop"


@pytest.mark.parametrize("runner", RUNNERS)
def test_previous_handlers_are_restored(child, runner):
    """The child's own SIGTERM handler is bypassed while the app runs and back afterwards."""
    c = child(runner, "restore")
    c.wait_started()
    c.kill(signal.SIGTERM)
    assert c.finish() == 0, c.describe()
    (handlers,) = c.named("handlers")
    assert handlers["restored"] is True
    assert handlers["own_calls_during_run"] == []
    assert handlers["own_calls_after"] == [signal.SIGTERM]
    assert_clean_reverse_order(c)


# -- the signal path: only record and wake -----------------------------------------


def iteration(event: str, i: int) -> Callable[[dict[str, Any]], bool]:
    """Matches ``event`` of the busy child's iteration ``i``."""
    return lambda e: e["event"] == event and e.get("i") == i


@pytest.mark.parametrize("logging_kind", ["structlog", "stdlib"])
@pytest.mark.parametrize("runner", RUNNERS)
def test_signal_while_the_main_thread_logs_stops_cleanly_every_time(runner, logging_kind):
    """SIGTERM landing while the main thread logs in a tight loop: exit 0, 20 times of 20.

    A shutdown_token callback logs through the same logger: run inside the
    handler, it would deadlock on structlog's lock or re-enter stdlib's stream.
    On asyncio the busy loop never yields, so only the handler can end it:
    readiness turns off in the handler itself.
    """
    c = Child([sys.executable, str(BUSY_CHILD), runner, logging_kind, str(ITERATIONS)])
    try:
        for i in range(ITERATIONS):
            c.wait_for(iteration("busy", i))
            c.kill(signal.SIGTERM)
            done = c.wait_for(iteration("iteration done", i), timeout=ITERATION_BOUND)
            assert (done["code"], done["drained"]) == (0, True), c.describe()
        assert c.finish() == 0, c.describe()
    finally:
        c.close()
    assert not [line for line in c.stderr if "Logging error" in line], c.describe()
    assert len(c.named("signal received")) == ITERATIONS


# -- the deadline holds whatever user code does --------------------------------------


@pytest.mark.realtime
@pytest.mark.parametrize("runner", RUNNERS)
def test_a_stop_blocking_the_event_loop_cannot_hold_the_deadline(child, runner):
    """An async stop calling time.sleep(30), shutdown_timeout=1: exit 3 in ~2 s, naming the line."""
    c = child(runner, "block_loop")
    c.wait_started()
    code, took = c.exit_after(signal.SIGTERM, timeout=10.0)
    assert code == 3, c.describe()
    assert took < 3.0, f"took {took:.2f}s"  # 1 s deadline + 0.5 s margin + the report
    line = f'"{CHILD}", line {line_of(CHILD, "# <block-loop>")}'
    if runner == "asyncio":
        # The loop itself is blocked: only the watchdog can keep the deadline.
        (missed,) = c.named("shutdown deadline missed")
        assert line in missed["stack"], missed["stack"]
        assert missed["exit"] is True
    else:
        # The threaded runner's control thread is free: it abandons the call.
        (stuck,) = c.named("component stuck")
        assert line in stuck["stack"], stuck["stack"]


@pytest.mark.realtime
@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize(("scenario", "expected"), [("user_thread", 0), ("user_thread_timeout", 3)])
def test_a_stuck_non_daemon_thread_cannot_hold_the_exit(child, runner, scenario, expected):
    """A user's non-daemon thread that never ends: the exit code stands, by the deadline."""
    c = child(runner, scenario)
    c.wait_started()
    code, took = c.exit_after(signal.SIGTERM, timeout=15.0)
    assert code == expected, c.describe()
    shutdown_timeout = 2.0
    assert took < shutdown_timeout + 1.5, f"took {took:.2f}s"
    (stuck,) = c.named("thread still running at exit")
    assert stuck["thread"] == "user:non-daemon"
    assert "in wait" in stuck["stack"], stuck["stack"]  # where it blocks: Event.wait
    (final,) = c.named("exit despite running threads")
    assert (final["run_exit_code"], final["threads"]) == (expected, ["user:non-daemon"])


def test_documented_asyncio_embedding_is_bounded_despite_a_stubborn_stop(child):
    """asyncio_run(main()) with an abandoned stop that swallows CancelledError exits; code 3."""
    c = child("asyncio", "embedded_stubborn")
    c.wait_started()
    c.send("stop")
    assert c.finish(timeout=10.0) == 3, c.describe()
    (stuck,) = c.named("component stuck")
    assert (stuck["component"], stuck["phase"]) == ("api", "stop")
    (pending,) = c.named("task still pending when its event loop closed")
    assert pending["task"] == "lifecycle:api.stop"
    assert f'"{CHILD}", line {line_of(CHILD, "# <stubborn>")}' in pending["stack"]
    (exiting,) = c.named("exiting")
    assert exiting["code"] == 3


@pytest.mark.parametrize(
    ("runner", "scenario"),
    [("thread", "stop_swallows_all"), ("asyncio", "stop_swallows_all"),
     ("asyncio", "embedded_swallows_all")],
)  # fmt: skip
def test_an_abandoned_stop_that_swallows_everything_cannot_hold_the_exit(child, runner, scenario):
    """An async stop swallowing every exception (GeneratorExit too) is left unclosed; exit 3.

    Closing such a coroutine — as garbage collection or the interpreter's
    exit would — throws GeneratorExit in, which it swallows, and loops for good.
    """
    c = child(runner, scenario)
    c.wait_started()
    sent = time.monotonic()
    if scenario.startswith("embedded_"):
        c.send("stop")
    else:
        c.kill(signal.SIGTERM)
    assert c.finish(timeout=10.0) == 3, c.describe()
    assert time.monotonic() - sent < 5.0
    (stuck,) = c.named("component stuck")
    assert (stuck["component"], stuck["phase"]) == ("api", "stop")
    (pending,) = c.named("task still pending when its event loop closed")
    assert f'"{CHILD}", line {line_of(CHILD, "# <swallows-all>")}' in pending["stack"]
    assert "left unclosed" in pending["hint"]
    assert crashes(c) == []


# -- the program's own signal handling, forks and the exit ----------------------------


def test_a_hosts_handler_calling_request_shutdown_never_deadlocks(edge):
    """The program's SIGTERM handler calls request_shutdown while main polls wait(0): 20 of 20.

    No runner is attached: the cancel the request causes runs on the
    lifecycle-deferred thread, not inside the handler, where it would wait
    for a lock the interrupted wait(0) holds.
    """
    c = edge("host_handler")
    for i in range(ITERATIONS):
        c.wait_for(iteration("polling", i))
        c.kill(signal.SIGTERM)
        done = c.wait_for(iteration("iteration done", i), timeout=ITERATION_BOUND)
        assert done["cancelled"] is True, c.describe()
    assert c.finish() == 0, c.describe()


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_forked_child_is_ended_by_sigterm(edge, runner):
    """A component's forked child inherits the runner's handler, yet terminate() ends it (-15)."""
    c = edge("fork", runner)
    c.wait_started()
    c.kill(signal.SIGTERM)
    assert c.finish() == 0, c.describe()
    (forked,) = c.named("forked child")
    assert (forked["alive"], forked["exitcode"]) == (False, -signal.SIGTERM)


def test_a_request_in_a_forked_child_still_cancels_the_token(edge):
    """An App made before os.fork(): in the child, request_shutdown still cancels its token."""
    c = edge("request_after_fork")
    assert c.finish() == 0, c.describe()
    (forked,) = c.named("forked child")
    assert forked["exitcode"] == 0


@pytest.mark.realtime
@pytest.mark.parametrize("runner", RUNNERS)
def test_the_exit_guard_leaves_later_threads_and_a_later_crash_to_the_program(edge, runner):
    """After run() returned 0: the program's own thread finishes its work; its crash exits 1."""
    c = edge("after_run_thread", runner)
    c.wait_started()
    c.kill(signal.SIGTERM)
    assert c.finish() == 1, c.describe()
    (returned,) = c.named("run returned")
    assert returned["code"] == 0
    assert c.named("upload done"), c.describe()
    assert not c.named("exit despite running threads")
    assert any("RuntimeError: the program failed after run()" in line for line in c.stderr)


@pytest.mark.realtime
@pytest.mark.parametrize("runner", RUNNERS)
def test_a_stuck_thread_of_the_app_is_left_and_the_sys_exit_code_stands(edge, runner):
    """A component's non-daemon thread stuck past the deadline is left; sys.exit(5) is the code."""
    c = edge("stuck_then_exit", runner)
    c.wait_started()
    code, took = c.exit_after(signal.SIGTERM, timeout=15.0)
    assert code == 5, c.describe()
    assert took < 0.5 + 2.0  # shutdown_timeout, then the guard's margin and the report
    (stuck,) = c.named("thread still running at exit")
    assert stuck["thread"] == "user:stuck"
    (final,) = c.named("exit despite running threads")
    assert (final["run_exit_code"], final["threads"]) == (0, ["user:stuck"])


@pytest.mark.realtime
def test_where_the_exit_wait_cannot_be_shortened_a_later_crash_still_exits_1(edge):
    """The guard's os._exit fallback: an unhandled exception after run() returned 0 exits 1."""
    c = edge("stuck_then_crash_os_exit")
    c.wait_started()
    assert c.exit_after(signal.SIGTERM, timeout=15.0)[0] == 1, c.describe()
    (final,) = c.named("exit despite running threads")
    assert (final["run_exit_code"], final["exit_code"]) == (0, 1)


@pytest.mark.parametrize("runner", RUNNERS)
def test_an_interrupt_escaping_run_stops_the_app_and_restores_the_handlers(edge, runner):
    """run(signals=(SIGHUP,)), then Ctrl-C: app stopped, then KeyboardInterrupt; handlers back."""
    c = edge("interrupt", runner)
    c.wait_started()
    c.kill(signal.SIGINT)
    assert c.finish() == 0, c.describe()
    assert [e["what"] for e in c.named("call")] == ["start", "stop"]
    (raised,) = c.named("run raised")
    assert raised["error"] == "KeyboardInterrupt"
    (after,) = c.named("after")
    assert (after["sighup_restored"], after["sigint_restored"], after["state"]) == (
        True, True, "STOPPED",
    )  # fmt: skip
    assert crashes(c) == []


@pytest.mark.parametrize("runner", RUNNERS)
def test_signals_no_process_can_handle_are_refused_before_any_is_installed(edge, runner):
    """run(signals=(SIGTERM, SIGKILL)) raises ConfigError naming SIGKILL; SIGTERM still kills."""
    c = edge("bad_signals", runner)
    waiting = c.wait_for(lambda e: e["event"] == "waiting")
    (raised,) = c.named("run raised")
    assert raised["error"] == "ConfigError"
    assert "SIGKILL cannot be handled" in raised["message"]
    assert waiting["handler_is_default"] is True
    assert c.exit_after(signal.SIGTERM)[0] == -signal.SIGTERM, c.describe()


@pytest.mark.parametrize("runner", RUNNERS)
def test_timeouts_too_long_for_any_thread_to_wait_are_no_limit(edge, runner):
    """shutdown_timeout=stop_timeout=1e10 (past threading.TIMEOUT_MAX): SIGTERM stops; exit 0."""
    c = edge("huge_timeouts", runner)
    c.wait_started()
    assert c.exit_after(signal.SIGTERM)[0] == 0, c.describe()
    assert crashes(c) == []
    assert c.summary()["components"]["db"]["state"] == "stopped"


@pytest.mark.realtime
def test_the_watchdog_stays_quiet_once_the_app_finished(edge):
    """The app stops in time; a leftover holds its loop's teardown past the deadline: exit 0."""
    c = edge("clean_teardown")
    c.wait_started()
    assert c.exit_after(signal.SIGTERM)[0] == 0, c.describe()
    (returned,) = c.named("run returned")
    assert returned["code"] == 0
    assert not c.named("shutdown deadline missed")


# -- embedding ---------------------------------------------------------------------


def test_example_embedded_multiprocessing():
    """Spawned children run apps with signals=None; the parent stops them; all exit 0."""
    example = ROOT / "examples" / "embedded_multiprocessing.py"
    done = subprocess.run(
        [sys.executable, str(example)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "children exit codes: [0, 0, 0]" in done.stdout, done.stdout


@pytest.mark.parametrize("runner", RUNNERS)
def test_example_embedded_own_signals(runner):
    """A process owning SIGTERM forwards it to request_shutdown; the app stops; exit 0."""
    example = ROOT / "examples" / "embedded_own_signals.py"
    c = Child([sys.executable, str(example), runner])
    try:
        c.wait_for(lambda e: e["event"] == "app started")
        c.kill(signal.SIGTERM)
        assert c.finish() == 0, c.describe()
        (own,) = c.named("own handler")
        assert own["signal"] == "SIGTERM"
        assert c.summary()["reason"] == "SIGTERM via the host's own handler"
        (checked,) = c.named("handler untouched")
        assert checked["ok"] is True
    finally:
        c.close()


# -- a signal that lands on another thread ---------------------------------------------

THREADS_CHILD = "tests.procs.signal_threads_child"
SHUTDOWN_LATENCY = 2.0
"""Seconds from a SIGTERM to the child's "signal received" at most, whichever thread it hit
(measured: a few milliseconds; without a wakeup, a main thread blocked in a lock never
hears of a signal that hit another thread)."""
BATCH = 5
"""Children signalled at once (a bound on the machine's load)."""


def _shutdown_began(e: dict[str, Any]) -> bool:
    """The runner's "signal received", or (no handler of its own) the app leaving RUNNING."""
    return e["event"] == "signal received" or (
        e["event"] == "app transition" and e["to_state"] in ("DRAINING", "STOPPING")
    )


def _signal_spread(
    runner: str, count: int, *, direct: bool, mode: tuple[str, ...] = ()
) -> list[float]:
    """``count`` fresh busy children, ``BATCH`` at a time, each sent one SIGTERM; the latencies.

    ``direct``: the child sends it to a spinning worker's thread itself
    (``pthread_kill``); otherwise the parent sends it to the process.
    Each child must begin its shutdown within `SHUTDOWN_LATENCY` of the
    signal (by the child's own clock, the same as ours) and exit 0 (130).
    ``mode``: further arguments of the child (``own``: its own handler;
    ``interrupt``: embedded under ``asyncio_run``, sent SIGINT, exit 130).
    """
    code, reason = 0, "signal SIGTERM"
    if "own" in mode:
        reason = "own SIGTERM"
    if "interrupt" in mode:
        code, reason = 130, "the runner's with-block ended"
    latencies: list[float] = []
    for first in range(0, count, BATCH):
        kids = [
            Child([sys.executable, "-m", THREADS_CHILD, runner, *mode])
            for _ in range(min(BATCH, count - first))
        ]
        try:
            for c in kids:
                c.wait_for(lambda e: e["event"] == "armed")
                c.wait_started()  # the main thread is in the runner's wait, or soon will be
            sent: list[float] = []
            for c in kids:
                sent.append(time.monotonic())
                if direct:
                    c.send("direct")
                else:
                    c.kill(signal.SIGTERM)
            for c, sent_at in zip(kids, sent, strict=True):
                at = c.wait_for(lambda e: e["event"] == "directed")["t"] if direct else sent_at
                got = c.wait_for(
                    _shutdown_began,
                    timeout=max(0.0, at + SHUTDOWN_LATENCY - time.monotonic()),
                )
                latencies.append(got["t"] - at)
                assert got["t"] - at <= SHUTDOWN_LATENCY, c.describe()
            for c in kids:
                assert c.finish() == code, c.describe()
                assert not crashes(c), c.describe()
                assert c.summary()["reason"] == reason, c.describe()
        finally:
            for c in kids:
                c.close()
    return latencies


@pytest.mark.realtime
@pytest.mark.parametrize("runner", RUNNERS)
def test_sigterm_directed_at_a_busy_worker_thread_starts_the_shutdown_at_once(runner):
    """SIGTERM sent to a spinning worker's thread (pthread_kill): shutdown within 2 s, exit 0.

    The C-level handler runs in that thread; the main thread, blocked in the
    runner's wait (or the event loop's select), must still be woken to run
    the Python-level one.
    """
    latencies = _signal_spread(runner, BATCH, direct=True)
    assert len(latencies) == BATCH


@pytest.mark.realtime
@pytest.mark.timeout(180)  # ~12 s on an idle machine: 30 children; loaded machines are slower
@pytest.mark.parametrize("runner", RUNNERS)
def test_sigterm_to_a_process_full_of_busy_threads_starts_the_shutdown_at_once(runner):
    """30 fresh children, busy threads of their own and lifecycle's, one SIGTERM each: 30 of 30."""
    latencies = _signal_spread(runner, 30, direct=False)
    assert len(latencies) == 30


@pytest.mark.realtime
def test_sigterm_on_a_worker_thread_reaches_an_embedding_hosts_own_handler_promptly():
    """signals=None, the host's own handler: SIGTERM on a worker's thread still stops the app.

    The runner installs no wake-up then (it touches no process-global
    state); waiting in slices bounds the host handler's delay.
    """
    latencies = _signal_spread("thread", BATCH, direct=True, mode=("own",))
    assert len(latencies) == BATCH


@pytest.mark.realtime
def test_sigint_on_a_worker_thread_reaches_asyncio_runs_handler_at_once():
    """Embedded under asyncio_run, SIGINT on a worker's thread: the loop wakes, the app stops."""
    latencies = _signal_spread("asyncio", BATCH, direct=True, mode=("interrupt",))
    assert len(latencies) == BATCH
