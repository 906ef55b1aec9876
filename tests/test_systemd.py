"""systemd notification (sd_notify): what is sent, when, and what is never sent.

Unit tests drive `SystemdNotifier` with a fake clock and a fake runner
against a real datagram socket; the process tests run a real child
(``tests/procs/systemd_apps.py``) with ``NOTIFY_SOCKET`` pointing at a socket
this test binds in place of systemd, and send it real signals.
"""

from __future__ import annotations

import contextlib
import doctest
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lifecycle
import lifecycle._runtime.systemd as systemd_module
from lifecycle import AppState
from lifecycle._runtime.systemd import (
    EXTEND_EVERY,
    NO_NOTIFIER,
    UNBOUNDED_STEP,
    SystemdNotifier,
    _DriverOwner,
    extend_usec,
    notifier_for,
    parse_notify_socket,
    watchdog_interval,
)
from lifecycle._runtime.watchdog import MARGIN
from tests.fakes import FakeClock

ROOT = Path(__file__).resolve().parent.parent
BOUND = 20.0
"""Seconds any wait on a child or a datagram may take before the test fails (a hang detector)."""
DRAIN = 2.5
TIMEOUT = 10.0
RUNNERS = ["thread", "asyncio"]


# -- the environment ------------------------------------------------------------


def test_notify_socket_forms():
    assert parse_notify_socket("/run/systemd/notify") == "/run/systemd/notify"
    assert parse_notify_socket("@/org/freedesktop/systemd1/notify") == (
        b"\0/org/freedesktop/systemd1/notify"
    )
    assert parse_notify_socket(None) is None
    assert parse_notify_socket("") is None


@pytest.mark.parametrize(
    "value", ["run/notify", "vsock:2:1234", "@", "/" + "x" * 200, "notify", "./n"]
)
def test_notify_socket_other_values_are_refused_naming_variable_and_value(value):
    with pytest.raises(ValueError, match="NOTIFY_SOCKET") as caught:
        parse_notify_socket(value)
    assert repr(value) in str(caught.value)


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert watchdog_interval("4000000", None, 42) == 2.0
    assert watchdog_interval("4000000", "", 42) == 2.0
    assert watchdog_interval("4000000", "42", 42) == 2.0
    assert watchdog_interval("500000", None, 42) == 0.25
    assert watchdog_interval(None, None, 42) is None
    assert watchdog_interval("", "42", 42) is None


def test_watchdog_pid_of_another_process_means_no_pings():
    # Inherited from the service's main process: it pings for itself.
    assert watchdog_interval("4000000", "41", 42) is None


@pytest.mark.parametrize(
    ("usec", "pid", "named"),
    [
        ("abc", None, "WATCHDOG_USEC"),
        ("0", None, "WATCHDOG_USEC"),
        ("-5", None, "WATCHDOG_USEC"),
        ("1.5", None, "WATCHDOG_USEC"),
        ("4000000", "x", "WATCHDOG_PID"),
        ("4000000", "0", "WATCHDOG_PID"),
    ],
)
def test_watchdog_bad_values_are_refused_naming_them(usec, pid, named):
    with pytest.raises(ValueError, match=named):
        watchdog_interval(usec, pid, 42)


# -- EXTEND_TIMEOUT_USEC from a fake clock ----------------------------------------


def test_extend_covers_the_time_left_until_the_deadline_plus_the_margin(clock):
    deadline = clock() + 10.0
    values = []
    for _ in range(5):
        values.append(extend_usec(deadline, clock()))
        clock.advance(1.0)
    assert values == [int((10.0 - i + MARGIN) * 1_000_000) for i in range(5)]


def test_extend_stops_at_and_past_the_deadline_and_before_a_request(clock):
    deadline = clock() + 2.0
    assert extend_usec(deadline, clock.advance(1.999)) == 501_000
    assert extend_usec(deadline, clock.advance(0.001)) is None
    assert extend_usec(deadline, clock.advance(5.0)) is None
    assert extend_usec(None, clock()) is None


@pytest.mark.parametrize("ahead", [math.inf, 1e12, 1e300])
def test_an_unbounded_shutdown_extends_in_steps_never_infinitely(clock, ahead):
    step = extend_usec(clock() + ahead, clock())
    assert step == int(UNBOUNDED_STEP * 1_000_000)


# -- the notifier with a fake runner ------------------------------------------------


class FakeOwner:
    """The runner as the notifier reads it."""

    def __init__(self) -> None:
        self.speaking = True
        self.the_deadline: float | None = None
        self.the_state = AppState.STARTING
        self.probes = 0
        self.control = False  # whether the calling thread counts as the control loop's
        self.status_suffix = ""

    def speaks(self) -> bool:
        return self.speaking

    def deadline(self) -> float | None:
        return self.the_deadline

    def state(self) -> AppState:
        return self.the_state

    def status(self, state: AppState) -> str:
        return f"{state.value}{self.status_suffix}"

    def probe(self) -> None:
        self.probes += 1

    def in_control(self) -> bool:
        return self.control


class Systemd:
    """A datagram socket standing in for systemd's notification socket; reads on a thread."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @property
    def env(self) -> str:
        a = self.address
        return "@" + a[1:].decode() if isinstance(a, bytes) else a

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.received.append((time.monotonic(), data.decode()))
                self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[str], bool], timeout: float = BOUND, after: int = 0
    ) -> int:
        """The index of the first message from ``after`` on matching ``predicate`` (bounded)."""

        def found() -> int | None:
            return next(
                (i for i in range(after, len(self.received)) if predicate(self.received[i][1])),
                None,
            )

        with self._cond:
            self._cond.wait_for(lambda: found() is not None, timeout)
            index = found()
        assert index is not None, f"no such message within {timeout}s: {self.messages()}"
        return index

    def messages(self) -> list[str]:
        with self._cond:
            return [m for _, m in self.received]

    def close(self) -> None:
        self._closed = True
        self._thread.join(BOUND)
        self.sock.close()


def fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.split("\n"))


@pytest.fixture
def systemd(tmp_path) -> Iterator[Systemd]:
    s = Systemd(str(tmp_path / "notify"))
    try:
        yield s
    finally:
        s.close()


def make_notifier(systemd: Systemd, owner: FakeOwner, clock: FakeClock, watchdog=None):
    return SystemdNotifier("t", systemd.address, owner=owner, watchdog=watchdog, clock=clock)


def test_ready_then_stopping_with_status_and_extend(systemd, clock):
    owner = FakeOwner()
    n = make_notifier(systemd, owner, clock)
    n.app_moved(AppState.STARTING, clock())
    n.app_moved(AppState.RUNNING, clock())
    owner.the_deadline = clock() + 10.0
    n.app_moved(AppState.DRAINING, clock())
    n.app_moved(AppState.STOPPING, clock.advance(2.0))
    n.app_moved(AppState.STOPPED, clock.advance(1.0))
    systemd.wait_for(lambda m: m.startswith("STATUS=stopped"))
    n.close()
    assert systemd.messages() == [
        "READY=1\nSTATUS=running",  # nothing before it
        "STOPPING=1\nSTATUS=draining\nEXTEND_TIMEOUT_USEC=10500000",
        "STATUS=stopping\nEXTEND_TIMEOUT_USEC=8500000",  # STOPPING=1 once
        "STATUS=stopped",  # the last word asks for no more time
    ]


def test_a_runner_that_does_not_speak_for_the_process_sends_nothing(systemd, clock):
    owner = FakeOwner()
    owner.speaking = False
    n = make_notifier(systemd, owner, clock, watchdog=0.5)
    for state in (AppState.RUNNING, AppState.DRAINING, AppState.STOPPED):
        n.app_moved(state, clock())
    n.close()
    # A marker datagram sent after them arrives after anything they sent.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"MARK=1", systemd.address)
    systemd.wait_for(lambda m: m == "MARK=1")
    assert systemd.messages() == ["MARK=1"]


def test_extensions_are_resent_each_second_shrinking_and_stop_past_the_deadline(systemd, clock):
    owner = FakeOwner()
    n = make_notifier(systemd, owner, clock)
    n.app_moved(AppState.RUNNING, clock())
    assert n.step(clock()) is None  # running, no watchdog: nothing periodic
    began = clock()
    owner.the_deadline = began + 3.0
    owner.the_state = AppState.DRAINING
    n.app_moved(AppState.DRAINING, clock())  # the first extension: 3.5 s
    assert n.step(clock()) == began + EXTEND_EVERY  # the thread plans the next
    assert n.step(clock.advance(1.0)) == began + 2.0  # 2.5 s
    owner.status_suffix = ": db"  # a changed status goes along with the next extension
    assert n.step(clock.advance(1.0)) == began + 3.0  # 1.5 s
    owner.status_suffix = ": nothing"
    assert n.step(clock.advance(1.0)) is None  # at the deadline: no more extending
    assert n.step(clock.advance(1.0)) is None
    n.close()
    systemd.wait_for(lambda m: "STATUS=draining: db" in m)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"MARK=1", systemd.address)
    systemd.wait_for(lambda m: m == "MARK=1")
    assert systemd.messages()[1:] == [
        "STOPPING=1\nSTATUS=draining\nEXTEND_TIMEOUT_USEC=3500000",
        "EXTEND_TIMEOUT_USEC=2500000",  # the status unchanged: not re-sent
        "EXTEND_TIMEOUT_USEC=1500000\nSTATUS=draining: db",
        "MARK=1",
    ]


def test_watchdog_pings_only_when_the_control_loop_answered_the_probe(systemd, clock):
    owner = FakeOwner()
    n = make_notifier(systemd, owner, clock, watchdog=0.5)
    stamped = n.turning(clock)
    n.app_moved(AppState.RUNNING, clock())
    assert n.step(clock()) == clock() + 0.5  # the first probe, no ping yet
    assert owner.probes == 1
    owner.control = True
    stamped()  # the control loop turned: answers the probe
    assert n.step(clock.advance(0.5)) == clock() + 0.5  # ping 1, probe 2
    stamped()  # answers probe 2
    n.step(clock.advance(0.5))  # ping 2, probe 3
    owner.control = False
    stamped()  # another thread reading the clock (the watchdog's report) answers nothing
    n.step(clock.advance(0.5))  # no ping: probe 3 unanswered (the loop is blocked)
    n.step(clock.advance(0.5))  # still none
    owner.control = True
    stamped()  # unblocked: answers probe 5
    n.step(clock.advance(0.5))  # ping 3
    n.close()
    systemd.wait_for(lambda m: m.startswith("READY"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"MARK=1", systemd.address)
    systemd.wait_for(lambda m: m == "MARK=1")
    assert systemd.messages().count("WATCHDOG=1") == 3
    assert owner.probes == 6


def test_the_notifier_thread_blocks_the_asynchronous_signals(systemd):
    class MaskOwner(FakeOwner):
        def __init__(self) -> None:
            super().__init__()
            self.mask: set[int] | None = None
            self.probed = threading.Event()

        def probe(self) -> None:  # runs on the notifier's thread
            self.mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
            self.probed.set()

    owner = MaskOwner()
    n = SystemdNotifier("t", systemd.address, owner=owner, watchdog=30.0)
    n.start()
    try:
        n.app_moved(AppState.RUNNING, time.monotonic())  # wakes the thread: its first probe
        assert owner.probed.wait(BOUND)
    finally:
        n.close()
    assert owner.mask is not None
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} <= owner.mask
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # not this one


def test_a_failing_send_warns_once_and_never_raises(tmp_path, clock, log_events):
    owner = FakeOwner()
    n = SystemdNotifier("t", str(tmp_path / "gone"), owner=owner, watchdog=None, clock=clock)
    n.app_moved(AppState.RUNNING, clock())
    owner.the_deadline = clock() + 5
    n.app_moved(AppState.DRAINING, clock())
    n.app_moved(AppState.STOPPED, clock())
    n.close()
    warnings = [e for e in log_events if e["event"] == "systemd notification failed"]
    assert len(warnings) == 1, log_events
    assert warnings[0]["variable"] == "NOTIFY_SOCKET"
    assert warnings[0]["socket"] == str(tmp_path / "gone")


def test_the_send_on_the_control_thread_costs_microseconds(systemd, clock):
    owner = FakeOwner()
    owner.the_deadline = clock() + 30
    n = make_notifier(systemd, owner, clock)
    n.app_moved(AppState.RUNNING, clock())
    n.app_moved(AppState.DRAINING, clock())
    costs = []
    for _ in range(200):
        began = time.perf_counter()
        n.app_moved(AppState.STOPPING, clock())
        costs.append(time.perf_counter() - began)
    n.close()
    costs.sort()
    # The median of a datagram send with its formatting; generous for a loaded machine.
    assert costs[len(costs) // 2] < 500e-6, costs[len(costs) // 2]


def test_status_lines_name_the_phase_the_reason_and_what_is_left_to_stop():
    adaptive = lifecycle.App("svc", drain_delay=lifecycle.Drain(min=1.5, max=10, quiet=0.5))
    before_start = _DriverOwner(lifecycle.ThreadedRunner(adaptive, signals=None))
    assert before_start.status(AppState.DRAINING) == "draining 1.5s to 10s"
    fixed = _DriverOwner(lifecycle.ThreadedRunner(lifecycle.App("svc", drain_delay=5)))
    assert fixed.status(AppState.DRAINING) == "draining 5s"
    app = lifecycle.App("svc")
    previous = None
    for i in range(7):
        previous = app.add(
            object(), name=f"c{i}", depends_on=[previous] if previous else [], stop=lambda: None
        )
    runner = lifecycle.ThreadedRunner(app, signals=None)
    owner = _DriverOwner(runner)
    with runner:
        assert owner.status(AppState.RUNNING) == "running (7 components)"
        assert runner.scheduler is not None
        runner.scheduler.shutdown_reason = "signal SIGTERM"  # as the scheduler records it
        assert owner.status(AppState.DRAINING) == "draining 0s (signal SIGTERM)"
        assert owner.status(AppState.STOPPING) == (
            "stopping: c6, c5, c4, c3, c2 and 2 more (signal SIGTERM)"  # the stop order
        )
        runner.scheduler.shutdown_reason = None
    assert owner.status(AppState.STOPPED) == "stopped, exit code 0"


# -- which runner gets a notifier ---------------------------------------------------


def owning_runner() -> lifecycle.ThreadedRunner:
    runner = lifecycle.ThreadedRunner(lifecycle.App("svc"))
    runner._run_owns_process = True  # as lifecycle.run sets it
    return runner


@pytest.mark.parametrize("value", ["relative/notify", "vsock:2:99"])
def test_a_bad_notify_socket_warns_once_naming_it_and_sends_nothing(value, log_events):
    assert notifier_for(owning_runner(), {"NOTIFY_SOCKET": value}) is NO_NOTIFIER
    warnings = [e for e in log_events if e["log_level"] == "warning"]
    assert len(warnings) == 1, log_events
    assert "NOTIFY_SOCKET" in warnings[0]["error"]
    assert repr(value) in warnings[0]["error"]


def test_a_bad_watchdog_usec_warns_and_notifies_without_pings(systemd, log_events):
    notifier = notifier_for(
        owning_runner(), {"NOTIFY_SOCKET": systemd.env, "WATCHDOG_USEC": "soon"}
    )
    try:
        assert isinstance(notifier, SystemdNotifier)
        assert notifier.watchdog is None
    finally:
        notifier.close()
    (warning,) = [e for e in log_events if e["log_level"] == "warning"]
    assert "WATCHDOG_USEC='soon'" in warning["error"]


def test_no_notifier_without_notify_socket_or_for_an_embedded_runner(systemd, log_events):
    assert notifier_for(owning_runner(), {}) is NO_NOTIFIER
    assert notifier_for(owning_runner(), {"NOTIFY_SOCKET": ""}) is NO_NOTIFIER
    embedded = lifecycle.ThreadedRunner(lifecycle.App("svc"))
    assert notifier_for(embedded, {"NOTIFY_SOCKET": systemd.env}) is NO_NOTIFIER
    assert notifier_for(embedded, {"NOTIFY_SOCKET": "bad"}) is NO_NOTIFIER  # not even a warning
    assert log_events == []


# -- real processes -----------------------------------------------------------------


class Child:
    """A child of tests/procs/systemd_apps.py; stdout is JSON lines, read on a thread."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
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
            with contextlib.suppress(ValueError), self._cond:
                self.events.append((time.monotonic(), json.loads(line)))
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def wait_child(self, what: str) -> float:
        """When the child said ``what`` (bounded wait)."""

        def found() -> float | None:
            return next(
                (t for t, e in self.events if e["event"] == "child" and e["what"] == what), None
            )

        with self._cond:
            self._cond.wait_for(lambda: found() is not None or self.proc.poll() is not None, BOUND)
            at = found()
        assert at is not None, f"child did not say {what!r}: {self.describe()}"
        return at

    def named(self, event: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for _, e in self.events if e["event"] == event]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        try:
            code = self.proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the child did not exit within {BOUND}s\n{self.describe()}")
        for reader in self._readers:
            reader.join(BOUND)
        return code

    def describe(self) -> str:
        return (
            "\n".join(json.dumps(e)[:300] for _, e in self.events[-30:])
            + "\n--- stderr:\n"
            + "".join(self.stderr[-40:])
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def spawn(tmp_path) -> Iterator[Callable[..., Child]]:
    children: list[Child] = []

    def start(scenario: str, runner: str, notify: str, **env: str) -> Child:
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("WATCHDOG_", "NOTIFY_"))
        }
        environ.update(NOTIFY_SOCKET=notify, TEST_DRAIN=str(DRAIN), TEST_TIMEOUT=str(TIMEOUT))
        environ.update(env)
        argv = [sys.executable, "-m", "tests.procs.systemd_apps", scenario, runner, str(tmp_path)]
        child = Child(argv, environ)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            child.close()


def assert_nothing_more(systemd: Systemd, count: int) -> None:
    """Nothing beyond the first ``count`` messages: a marker sent now arrives right after them."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"MARK=1", systemd.address)
    index = systemd.wait_for(lambda m: m == "MARK=1")
    assert index == count, systemd.messages()


@pytest.mark.process
@pytest.mark.parametrize("runner", RUNNERS)
def test_run_notifies_ready_stopping_status_and_shrinking_extensions(
    spawn, systemd, tmp_path, runner
):
    child = spawn("serve", runner, systemd.env, WATCHDOG_USEC="600000")
    ready = systemd.wait_for(lambda m: "READY=1" in m)
    # READY came after api's start returned: its marker was written just before.
    assert (tmp_path / "api-started").exists()
    assert fields(systemd.messages()[ready]) == {"READY": "1", "STATUS": "running (2 components)"}
    # Pings at about WATCHDOG_USEC / 2 while the runner is live.
    third = systemd.wait_for(lambda m: m == "WATCHDOG=1", after=ready)
    for _ in range(2):
        third = systemd.wait_for(lambda m: m == "WATCHDOG=1", after=third + 1)
    pings = [t for t, m in systemd.received[ready : third + 1] if m == "WATCHDOG=1"]
    gaps = sorted(b - a for a, b in itertools.pairwise(pings))
    assert 0.15 < gaps[len(gaps) // 2] < 0.6, gaps  # the interval: 0.3 s
    assert gaps[-1] < 1.5, gaps

    sent = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    stopping = systemd.wait_for(lambda m: "STOPPING=1" in m, after=ready)
    assert fields(systemd.messages()[stopping])["STATUS"] == f"draining {DRAIN:g}s (signal SIGTERM)"
    systemd.wait_for(lambda m: m.startswith("STATUS=stopped, exit code 0"), after=stopping)
    assert child.finish() == 0
    received = systemd.received[stopping:]
    extends = [(t, int(fields(m)["EXTEND_TIMEOUT_USEC"])) for t, m in received if "EXTEND" in m]
    assert len(extends) >= 3, received  # the drain alone is 2.5 s: at 0, 1 and 2 s
    values = [usec for _, usec in extends]
    assert values == sorted(values, reverse=True), values
    assert len(set(values)) == len(values), values
    assert values[0] <= (TIMEOUT + MARGIN) * 1_000_000
    # Each covers the time left until one deadline (the signal + TIMEOUT) plus the margin.
    ends = [t + usec / 1_000_000 for t, usec in extends]
    assert max(ends) - min(ends) < 0.5, ends
    assert abs(ends[0] - (sent + TIMEOUT + MARGIN)) < 1.0, (ends[0], sent)
    statuses = [fields(m)["STATUS"] for _, m in received if "STATUS=" in m]
    assert statuses[:2] == [
        f"draining {DRAIN:g}s (signal SIGTERM)",
        "stopping: api, db (signal SIGTERM)",
    ], statuses
    assert statuses[-1] == "stopped, exit code 0"
    # The thread's once-a-second refresh may fall between the two moves.
    assert all(s.startswith("stopp") for s in statuses[2:]), statuses
    assert [m for m in systemd.messages() if "STOPPING=1" in m] == [systemd.messages()[stopping]]
    assert [m for m in systemd.messages() if "READY=1" in m] == [systemd.messages()[ready]]


@pytest.mark.process
@pytest.mark.parametrize("runner", RUNNERS)
def test_a_forced_exit_says_so_as_its_last_status(spawn, systemd, runner):
    """A second SIGTERM past the grace ends the process: systemd's last STATUS= says why."""
    child = spawn("serve", runner, systemd.env, TEST_DRAIN="60", TEST_TIMEOUT="120")
    ready = systemd.wait_for(lambda m: "READY=1" in m)
    child.proc.send_signal(signal.SIGTERM)
    stopping = systemd.wait_for(lambda m: "STOPPING=1" in m, after=ready)
    # The notifier refreshes EXTEND_TIMEOUT_USEC once a second: after the
    # second refresh the first signal is more than the 1 s grace old.
    first = systemd.wait_for(lambda m: m.startswith("EXTEND_TIMEOUT_USEC="), after=stopping + 1)
    systemd.wait_for(lambda m: m.startswith("EXTEND_TIMEOUT_USEC="), after=first + 1)
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 128 + signal.SIGTERM
    last = systemd.wait_for(lambda m: m.startswith("STATUS=forced exit"), after=stopping)
    assert systemd.messages()[last] == (
        f"STATUS=forced exit by a second SIGTERM, exit code {128 + signal.SIGTERM}"
    )
    assert_nothing_more(systemd, last + 1)


@pytest.mark.process
@pytest.mark.parametrize("runner", RUNNERS)
def test_an_app_running_as_soon_as_it_begins_says_ready(spawn, systemd, runner):
    """Only workers (nothing to start): RUNNING comes before the signal handlers; READY=1 still."""
    child = spawn("instant", runner, systemd.env)
    ready = systemd.wait_for(lambda m: "READY=1" in m)
    assert fields(systemd.messages()[ready]) == {"READY": "1", "STATUS": "running (1 component)"}
    child.proc.send_signal(signal.SIGTERM)
    systemd.wait_for(lambda m: m.startswith("STATUS=stopped, exit code 0"), after=ready)
    assert child.finish() == 0
    assert [m for m in systemd.messages() if "READY=1" in m] == [systemd.messages()[ready]]


@pytest.mark.process
def test_an_abstract_notify_socket_works_too(spawn):
    systemd = Systemd(b"\0lifecycle-test-" + uuid.uuid4().hex.encode())
    try:
        assert systemd.env.startswith("@")
        child = spawn("serve", "thread", systemd.env)
        systemd.wait_for(lambda m: "READY=1" in m)
        child.proc.send_signal(signal.SIGTERM)
        systemd.wait_for(lambda m: "STOPPING=1" in m)
        assert child.finish() == 0
        systemd.wait_for(lambda m: m.startswith("STATUS=stopped"))
    finally:
        systemd.close()


@pytest.mark.process
def test_watchdog_pings_stop_while_a_coroutine_blocks_the_loop(spawn, systemd):
    child = spawn("block", "asyncio", systemd.env, WATCHDOG_USEC="400000")  # a ping each 0.2 s
    ready = systemd.wait_for(lambda m: "READY=1" in m)
    live = systemd.wait_for(lambda m: m == "WATCHDOG=1", after=ready)
    live = systemd.wait_for(lambda m: m == "WATCHDOG=1", after=live + 1)
    child.send("block")  # a coroutine calls time.sleep(2.0) on the loop
    blocking = child.wait_child("blocking")
    unblocked = child.wait_child("unblocked")
    # Pings resume once the loop turns again.
    after = systemd.wait_for(
        lambda m: m == "WATCHDOG=1", after=len([t for t, _ in systemd.received if t <= unblocked])
    )
    during = [t for t, m in systemd.received if m == "WATCHDOG=1" and blocking < t < unblocked]
    # A live loop pings ~10 times in 2 s; blocked, at most the one certifying a probe answered
    # just before the block.
    assert len(during) <= 1, (during, blocking, unblocked)
    assert unblocked - blocking > 1.5
    assert systemd.received[after][0] > unblocked
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 0


@pytest.mark.process
def test_an_embedded_runner_sends_nothing(spawn, systemd):
    child = spawn("embedded", "thread", systemd.env, WATCHDOG_USEC="200000")
    child.wait_child("api started")
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 0
    child.wait_child("exit 0")
    assert_nothing_more(systemd, 0)


@pytest.mark.process
def test_a_runner_that_speaks_for_the_process_without_handlers_notifies(spawn, systemd):
    child = spawn("speaker", "thread", systemd.env)
    systemd.wait_for(lambda m: "READY=1" in m)
    child.proc.send_signal(signal.SIGTERM)
    systemd.wait_for(lambda m: "STOPPING=1" in m)
    assert child.finish() == 0


@pytest.mark.process
@pytest.mark.parametrize("runner", RUNNERS)
def test_a_missing_notify_socket_warns_once_and_the_app_stops_normally(spawn, tmp_path, runner):
    child = spawn("serve", runner, str(tmp_path / "no-such-socket"), WATCHDOG_USEC="200000")
    child.wait_child("api started")
    # A few pings' worth of failures; still one warning.
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 0
    warnings = child.named("systemd notification failed")
    assert len(warnings) == 1, child.describe()
    assert warnings[0]["socket"] == str(tmp_path / "no-such-socket")
    assert warnings[0]["level"] == "warning"
    (summary,) = child.named("shutdown summary")
    assert summary["exit_code"] == 0


@pytest.mark.process
def test_lifecycle_exec_notifies_for_its_process(systemd, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHDOG_", "NOTIFY_"))}
    env["NOTIFY_SOCKET"] = systemd.env
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lifecycle",
            "exec",
            "--",
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        systemd.wait_for(lambda m: "READY=1" in m, timeout=5.0)
        proc.send_signal(signal.SIGTERM)
        systemd.wait_for(lambda m: "STOPPING=1" in m)
    finally:
        proc.kill()
        proc.wait(BOUND)


def test_the_docstring_examples_hold():
    result = doctest.testmod(systemd_module, extraglobs={"math": math, "os": os})
    assert result.attempted >= 8
    assert result.failed == 0
