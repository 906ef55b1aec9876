"""`ProcessGroup`: a real parent process, real spawned children, real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lifecycle import ConfigError
from lifecycle._runtime.processes import KILL_MARGIN, ProcessGroup
from tests.procs.procgroup_child import UNCLOSED_DATA, make_app

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
BOUND = 15.0  # seconds any one wait in these tests may take
MARK = "LIFECYCLE_TEST_PROCGROUP"
Event = dict[str, Any]


def marked(mark: str) -> list[int]:
    """The live (not zombie) processes whose environment carries ``MARK=mark``: ours."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def until(what: str, check: Callable[[], object], timeout: float = BOUND) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class Parent:
    """``python -m tests.procs.procgroup_parent CONFIG`` in its own session, its stdout parsed."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.mark = uuid.uuid4().hex
        self.stderr_path = tmp / "stderr"
        self.events: list[Event] = []
        self._cond = threading.Condition()
        env = {**os.environ, MARK: self.mark}
        # Buffered stdout: each JSON line is one write(), so that the lines of the
        # processes sharing the pipe never interleave.
        env.pop("PYTHONUNBUFFERED", None)
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.procs.procgroup_parent", json.dumps(config)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # until every writer (children too) closed it
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unreadable line", "line": line.decode(errors="replace")}
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()

    def find(self, match: Callable[[Event], bool]) -> list[Event]:
        with self._cond:
            return [e for e in self.events if match(e)]

    def wait_for(self, what: str, match: Callable[[Event], bool], count: int = 1) -> list[Event]:
        deadline = time.monotonic() + BOUND
        with self._cond:
            while True:
                found = [e for e in self.events if match(e)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    shown = "\n".join(json.dumps(e) for e in self.events[-40:])
                    pytest.fail(f"timed out waiting for {what}\n{shown}\n{self.stderr()}")
                self._cond.wait(left)

    def started(self) -> list[int]:
        """Wait until the group started; the children's PIDs, by slot."""
        event = self.wait_for("the group started", lambda e: e["event"] == "process group started")
        return list(event[0]["pids"])

    def exit_code(self) -> int:
        try:
            return self.proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the parent did not exit within {BOUND} s\n{self.stderr()}")

    def result(self) -> Event:
        return self.wait_for("the result line", lambda e: e["event"] == "result")[0]

    def child_events(self, pid: int, what: str) -> list[Event]:
        return self.find(lambda e: e["event"] == "child" and e["pid"] == pid and e["what"] == what)

    def no_orphans(self, timeout: float = BOUND) -> None:
        until(f"no process marked {self.mark} left", lambda: not marked(self.mark), timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for pid in marked(self.mark):  # ours: they carry the mark
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[Callable[..., Parent]]:
    started: list[Parent] = []

    def spawn(**config: Any) -> Parent:
        p = Parent(tmp_path, config)
        started.append(p)
        return p

    yield spawn
    for p in started:
        p.close()
    for p in started:
        assert not p.find(lambda e: e["event"] == "unreadable line"), "interleaved output"


def spawned(index: int) -> Callable[[Event], bool]:
    return lambda e: e["event"] == "process spawned" and e["component"] == f"workers[{index}]"


def test_a_sigterm_stops_every_childs_app_gracefully(parent):
    """SIGTERM to the parent: each child's app runs its stop to the end; exit 0, nothing left."""
    p = parent(processes=2)
    pids = p.started()
    assert len(set(pids)) == 2
    p.proc.send_signal(signal.SIGTERM)
    assert p.exit_code() == 0, p.stderr()
    for pid in pids:
        p.wait_for(
            f"child {pid} stopped",
            lambda e, pid=pid: e.get("pid") == pid and e.get("what") == "stopped",
        )
    result = p.result()
    assert result["state"] == "STOPPED"
    assert [c["exit_code"] for c in result["children"]] == [0, 0]
    p.no_orphans()


def test_a_child_killed_is_restarted_after_its_backoff(parent):
    """kill -9 of a child: the group spawns a new one for its slot after the backoff, which runs."""
    backoff = 0.3
    policy = {
        "mode": "on-failure",
        "backoff": backoff,
        "jitter": 0.0,
        "max_restarts": 3,
        "within": 60,
    }
    p = parent(processes=2, restart=policy)
    first, other = p.started()
    killed_at = time.monotonic()
    os.kill(first, signal.SIGKILL)
    restarted = p.wait_for("a new process in slot 0", spawned(0), count=2)[1]
    took = time.monotonic() - killed_at
    new = restarted["pid"]
    assert new != first
    assert took < backoff + 3.0, f"restarted {took:.3f} s after the kill"
    exited = p.wait_for("the restart notice", lambda e: e["event"] == "process exited; restarting")
    assert (exited[0]["exit_code"], exited[0]["delay"]) == (128 + signal.SIGKILL, backoff)
    p.wait_for(
        "the new child running", lambda e: e["event"] == "process started" and e["pid"] == new
    )
    p.proc.send_signal(signal.SIGTERM)
    assert p.exit_code() == 0, p.stderr()
    result = p.result()
    assert [(c["pid"], c["restarts"]) for c in result["children"]] == [(new, 1), (other, 0)]
    assert p.child_events(new, "stopped")
    p.no_orphans()


def test_a_child_that_ignores_sigterm_is_killed_at_the_deadline(parent):
    """SIGTERM to a busy parent whose children ignore it: killed at the stop deadline, exit 3,
    no process left."""
    stop_timeout = 1.5
    p = parent(processes=2, behaviour="hang", stop_timeout=stop_timeout, busy=True)
    pids = p.started()
    p.wait_for(
        "the busy worker", lambda e: e.get("component") == "busy" and e.get("to_state") == "RUNNING"
    )
    signalled = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    assert p.exit_code() == 3, p.stderr()
    took = time.monotonic() - signalled
    assert stop_timeout - KILL_MARGIN - 0.1 < took < stop_timeout + 2.0, took
    for pid in pids:
        assert p.child_events(pid, "stop"), "the child's stop did not begin"
        assert not p.child_events(pid, "stopped")
    result = p.result()
    assert [c["exit_code"] for c in result["children"]] == [128 + signal.SIGKILL] * 2
    killed = p.find(lambda e: e["event"] == "process killed")
    assert sorted(e["pid"] for e in killed) == sorted(pids)
    p.no_orphans()


@pytest.mark.parametrize("pdeathsig", [True, False], ids=["pdeathsig+pipe", "pipe-only"])
def test_the_children_exit_within_1s_of_a_kill_9_of_the_parent(parent, pdeathsig):
    """kill -9 of the parent: every child's app shuts down and exits within 1 s; with
    PR_SET_PDEATHSIG off, the pipe alone tells them."""
    p = parent(processes=2, parent_death_signal=pdeathsig)
    pids = p.started()
    expected = signal.SIGTERM if pdeathsig else 0
    assert [p.child_events(pid, "start")[0]["pdeathsig"] for pid in pids] == [expected] * 2
    killed_at = time.monotonic()
    p.proc.kill()
    until("every child gone", lambda: not any(alive(pid) for pid in pids), timeout=1.0)
    took = time.monotonic() - killed_at
    reasons = {
        e["reason"]
        for e in p.wait_for(
            "the children's summaries", lambda e: e["event"] == "shutdown summary", 2
        )
    }
    if not pdeathsig:
        assert reasons == {"parent process exited"}
    assert took < 1.0
    p.no_orphans()


def test_restart_intensity_exceeded_fails_the_group_and_the_app(parent, tmp_path):
    """A child that crashes again at every restart: past max_restarts the group is FAILED and
    the parent exits FAILED (1), its other children stopped."""
    marker = tmp_path / "crash"
    policy = {"mode": "on-failure", "backoff": 0.05, "jitter": 0.0, "max_restarts": 2, "within": 60}
    p = parent(processes=2, behaviour="crash_if_marked", marker=str(marker), restart=policy)
    first, other = p.started()
    marker.write_text("")
    os.kill(first, signal.SIGKILL)
    assert p.exit_code() == 1, p.stderr()
    result = p.result()
    assert result["state"] == "FAILED"
    assert (result["children"][0]["restarts"], result["children"][0]["exit_code"]) == (2, 1)
    failed = p.find(lambda e: e["event"] == "process group failed")
    assert "restart limit (2 restarts within 60 s)" in failed[0]["error"]
    assert p.child_events(other, "stopped")
    p.no_orphans()


def test_a_child_that_fails_at_start_fails_the_start(parent, tmp_path):
    """A child whose app fails to start: the group's start fails (no restart during the start),
    the other children are stopped, the parent exits FAILED, nothing is left."""
    marker = tmp_path / "crash"
    marker.write_text("")
    p = parent(processes=2, behaviour="crash_if_marked", marker=str(marker))
    assert p.exit_code() == 1, p.stderr()
    assert p.result()["state"] == "FAILED"
    failed = p.find(lambda e: e["event"] == "process group failed")
    assert "before its app ran" in failed[0]["error"]
    p.no_orphans()


def test_a_start_cut_short_stops_what_it_spawned(parent):
    """SIGTERM while the children's apps are still starting: the group's start token is
    cancelled, the start stops the children itself (no stop is called), nothing is left."""
    p = parent(processes=2, behaviour="block_start", start_timeout=30)
    spawned_pids = [
        e["pid"] for e in p.wait_for("two spawns", lambda e: e["event"] == "process spawned", 2)
    ]
    for pid in spawned_pids:
        p.wait_for(
            f"child {pid} starting", lambda e, pid=pid: e["event"] == "child" and e["pid"] == pid
        )
    p.proc.send_signal(signal.SIGTERM)
    code = p.exit_code()
    result = p.result()
    # Killed children are no clean stop: the start raises ProcessesKilled.
    assert code != 0, p.stderr()
    assert result["state"] == "FAILED"
    assert [c["exit_code"] for c in result["children"]] == [128 + signal.SIGKILL] * 2
    killed = p.find(lambda e: e["event"] == "process killed")
    assert sorted(e["pid"] for e in killed) == sorted(spawned_pids)
    p.no_orphans()


def test_an_aborted_start_gives_the_running_children_their_graceful_stop(parent, tmp_path):
    """SIGTERM while one child's app starts and the other's runs: the booting one aborts its
    start, the running one gets its whole stop (SLOW_STOP s, past the old 1.1 s cut); exit 0."""
    p = parent(
        processes=2,
        behaviour="first_boots_slowly",
        marker=str(tmp_path / "first"),
        start_timeout=30,
        stop_timeout=30,
    )
    booting = p.wait_for("the booting child", lambda e: e.get("what") == "booting")[0]["pid"]
    running = p.wait_for(
        "the other child running",
        lambda e: e["event"] == "process started" and e["pid"] != booting,
    )[0]["pid"]
    p.proc.send_signal(signal.SIGTERM)
    assert p.exit_code() == 0, p.stderr()
    assert p.child_events(running, "stopped"), "the running child's stop was cut"
    assert not p.find(lambda e: e["event"] == "process killed")
    assert [c["exit_code"] for c in p.result()["children"]] == [0, 0]
    p.no_orphans()


@pytest.mark.parametrize(
    ("behaviour", "child_code", "parent_code"),
    [("stop_raises", 1, 1), ("stop_overruns", 3, 3)],
    ids=["failed", "timed-out"],
)
def test_a_childs_failed_shutdown_fails_the_groups_stop(parent, behaviour, child_code, parent_code):
    """A child whose own shutdown fails (exit 1) or overruns (exit 3): the group's stop raises
    ProcessGroupFailed / ProcessStopTimedOut; the parent exits FAILED / TIMEOUT."""
    p = parent(processes=2, behaviour=behaviour)
    p.started()
    p.proc.send_signal(signal.SIGTERM)
    assert p.exit_code() == parent_code, p.stderr()
    result = p.result()
    assert result["state"] == "FAILED"
    assert [c["exit_code"] for c in result["children"]] == [child_code] * 2
    failed = p.find(lambda e: e["event"] == "process stop failed")
    assert sorted(e["exit_code"] for e in failed) == [child_code] * 2
    p.no_orphans()


def test_a_failing_optional_component_of_a_child_does_not_fail_its_start(parent):
    """A non-critical component of the child's app fails to start: the child's app runs without
    it (as any app), the group starts, and the stop is clean, without overrun warnings."""
    p = parent(processes=1, behaviour="optional_fails")
    (pid,) = p.started()
    p.proc.send_signal(signal.SIGTERM)
    assert p.exit_code() == 0, p.stderr()
    assert p.child_events(pid, "stopped")
    assert not p.find(lambda e: "overrun" in e["event"]), p.find(lambda e: "overrun" in e["event"])
    p.no_orphans()


def test_a_childs_own_children_are_killed_with_it_at_the_deadline(parent):
    """A child that runs a command and ignores the stop: at the deadline its whole process group
    is killed, the command too; exit TIMEOUT, nothing left."""
    p = parent(processes=1, behaviour="grandchild", stop_timeout=1.0)
    p.started()
    gpid = p.wait_for("the grandchild", lambda e: e.get("what") == "grandchild")[0]["gpid"]
    p.proc.send_signal(signal.SIGTERM)
    assert p.exit_code() == 3, p.stderr()
    until("the grandchild gone", lambda: not alive(gpid), timeout=5.0)
    p.no_orphans()


def test_a_fork_helper_holding_the_childs_descriptors_does_not_hide_its_death(parent):
    """A child's fork-context helper inherits the child's descriptors (the multiprocessing
    sentinel's write end among them): kill -9 of the child is still seen, the slot restarted,
    and the helper, in the child's process group, is killed with it."""
    policy = {"mode": "on-failure", "backoff": 0.05, "jitter": 0.0, "max_restarts": 3, "within": 60}
    p = parent(processes=1, behaviour="fork_helper", restart=policy)
    (first,) = p.started()
    helper = p.wait_for("the helper", lambda e: e.get("what") == "helper")[0]["gpid"]
    killed_at = time.monotonic()
    os.kill(first, signal.SIGKILL)
    p.wait_for("a new process in slot 0", spawned(0), count=2)
    took = time.monotonic() - killed_at
    assert took < 3.0, f"the death was seen {took:.3f} s after the kill"  # once: 5 s (join)
    until("the helper gone", lambda: not alive(helper), timeout=5.0)
    p.proc.send_signal(signal.SIGTERM)
    assert p.exit_code() == 0, p.stderr()
    p.no_orphans()


def test_a_file_a_child_left_open_is_flushed_at_its_exit(parent, tmp_path):
    """A child's component writes to a file it never closes nor flushes: the child's fast exit
    flushes it (the bytes would be lost in the buffer otherwise)."""
    out = tmp_path / "out"
    p = parent(processes=1, behaviour="unclosed_file", marker=str(out))
    p.started()
    p.proc.send_signal(signal.SIGTERM)
    assert p.exit_code() == 0, p.stderr()
    assert out.read_text() == UNCLOSED_DATA
    p.no_orphans()


def test_the_parent_death_signal_is_set_before_the_target_is_unpickled(parent):
    """The parent's main module, imported again in each child, and the target's module, first
    imported there when the target is unpickled, already find PR_SET_PDEATHSIG set: a parent
    killed while its children import their code does not leave them running."""
    p = parent(processes=1, late_target=True)
    (pid,) = p.started()
    imported = p.child_events(pid, "import")[0]
    assert (imported["main_pdeathsig"], imported["pdeathsig"]) == (signal.SIGTERM,) * 2
    p.proc.send_signal(signal.SIGTERM)
    assert p.exit_code() == 0, p.stderr()
    p.no_orphans()


def test_the_arguments_are_checked_at_once():
    """A bad count, policy, stop signal or kill_after is refused when the group is made."""
    with pytest.raises(ValueError, match="processes must be a whole number >= 1"):
        ProcessGroup(make_app, processes=0)
    with pytest.raises(ConfigError, match="is not a restart policy"):
        ProcessGroup(make_app, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SIGSTOP does not make a process exit"):
        ProcessGroup(make_app, stop_signal=signal.SIGSTOP)
    with pytest.raises(ValueError, match="kill_after must be None or seconds"):
        ProcessGroup(make_app, kill_after=-1.0)
    with pytest.raises(TypeError, match="must be a function returning the child's App"):
        ProcessGroup(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot be sent to a child process"):
        ProcessGroup(lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="pass picklable args"):
        ProcessGroup(make_app, args=(threading.Lock(),))
    group = ProcessGroup(make_app, processes=3, name="workers")
    assert [(c.index, c.pid, c.state) for c in group.children] == [
        (0, None, "starting"),
        (1, None, "starting"),
        (2, None, "starting"),
    ]
