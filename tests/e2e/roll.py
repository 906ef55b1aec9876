"""A Kubernetes-style rolling restart behind a real haproxy, under load.

`rolling_restart` starts haproxy and ``replicas`` replicas of a server
command, puts closed-loop load on haproxy (`lifecycle._loadgen.run_load`,
every attempt counted, no retries) and replaces the replicas one at a time:

1. SIGTERM the old replica, and start its replacement on a fresh port.
2. ``lb_lag`` seconds after the signal, put the old replica's slot into
   maintenance -- what the endpoints controller does concurrently with the
   SIGTERM, with a lag of up to a few seconds. This runs on its own timer,
   concurrently with step 3.
3. When the replacement answers ``/readyz``, bind it to a fresh slot and wait
   until haproxy's *own* health check has marked that slot UP (as readiness
   gating does in Kubernetes; otherwise the harness measures its own
   impatience, not the server: a stdlib roll lost 380 instead of 16).
4. Wait (bounded) for the old replica to exit; record its exit code and how
   long it took from SIGTERM.

The load runs ``warmup`` seconds before the first step and ``settle`` seconds
after the last one; step *k* starts no earlier than ``warmup + k *
step_interval`` after the load started, so that servers with a long drain
are compared over about the same number of requests as fast ones. The
default interval is deliberately not a multiple of haproxy's 0.5 s check
interval: what a server that dies still "ready" loses depends on how long
until the next check, and the steps of one roll should sample different
phases of it rather than the same one twice.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import attrs

from lifecycle._demo.loadgen import LoadResult, run_load
from tests.e2e.haproxy import HAProxy, free_port


class ReplicaError(RuntimeError):
    """A replica did not start, did not become ready, or did not stop."""


class RollError(RuntimeError):
    """The roll could not proceed (a replica or haproxy misbehaved); nothing was measured."""


@attrs.frozen
class ReplicaExit:
    """How one replica ended after its SIGTERM.

    Attributes:
        name: The replica's name (``r1``, ``r2``, ...).
        port: The port it listened on.
        exit_code: Its exit status (negative: killed by that signal, as in `subprocess`).
        shutdown_seconds: From SIGTERM to exit (or to the kill, if ``killed``).
        killed: True if it outlived the bound and was SIGKILLed by PID.
        log_tail: The last lines of its stdout/stderr.
    """

    name: str
    port: int
    exit_code: int | None
    shutdown_seconds: float
    killed: bool
    log_tail: str


def _command(server_cmd: Sequence[str], port: int) -> list[str]:
    """Put ``port`` into ``{port}`` placeholders, or append it when there is none."""
    if any("{port}" in arg for arg in server_cmd):
        return [arg.replace("{port}", str(port)) for arg in server_cmd]
    return [*server_cmd, str(port)]


class Replica:
    """A server child process on 127.0.0.1:``port``, with its output in ``log_path``.

    The port is passed as the last argument (or in place of ``{port}``) and in
    the ``PORT`` environment variable. The child runs in its own session, so
    only the signals this class sends (by PID) reach it.
    """

    def __init__(self, server_cmd: Sequence[str], port: int, log_path: Path, name: str) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self.argv = _command(server_cmd, port)
        self.sigterm_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._exited = threading.Event()
        self._exited_at: float | None = None

    def start(self) -> None:
        """Start the child process."""
        if self._proc is not None:
            raise ReplicaError(f"replica {self.name} was already started")
        env = {**os.environ, "PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        # Record the exit the moment it happens, not when someone asks:
        # shutdown_seconds must not include the roll's other waits.
        threading.Thread(target=self._watch, name=f"watch-{self.name}", daemon=True).start()

    def _watch(self) -> None:
        assert self._proc is not None
        # Bounded like every wait here; the roll kills a replica long before this.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=600)
            self._exited_at = time.monotonic()
            self._exited.set()

    @property
    def pid(self) -> int:
        """PID of the child."""
        return self._process.pid

    @property
    def _process(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise ReplicaError(f"replica {self.name} was not started")
        return self._proc

    def running(self) -> bool:
        """Return True while the child has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def wait_ready(self, timeout: float = 10.0) -> float:
        """Poll ``GET /readyz`` (bounded) until it answers 200; return the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        last = "no answer yet"
        while True:
            if not self.running():
                raise ReplicaError(
                    f"replica {self.name} ({' '.join(self.argv)}) exited with "
                    f"{self._process.returncode} before it was ready:\n{self.log_tail()}"
                )
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
            try:
                conn.request("GET", "/readyz")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    return time.monotonic() - start
                last = f"status {response.status}"
            except (OSError, http.client.HTTPException) as exc:
                last = repr(exc)
            finally:
                conn.close()
            if time.monotonic() >= deadline:
                raise ReplicaError(
                    f"replica {self.name} on port {self.port} not ready after {timeout} s "
                    f"(last: {last}):\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def terminate(self) -> None:
        """Send SIGTERM to the child, by PID."""
        self.sigterm_at = time.monotonic()
        self._process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> ReplicaExit:
        """Wait up to ``timeout`` s for the exit; past that, SIGKILL by PID and report it."""
        proc = self._process
        killed = False
        if not self._exited.wait(timeout):
            killed = True
            killed_at = time.monotonic()
            proc.kill()
            if not self._exited.wait(5.0):
                raise ReplicaError(f"replica {self.name} (pid {proc.pid}) survived SIGKILL")
            self._exited_at = killed_at
        self._close_log()
        exited_at = self._exited_at
        assert exited_at is not None
        since = self.sigterm_at if self.sigterm_at is not None else exited_at
        return ReplicaExit(
            name=self.name,
            port=self.port,
            exit_code=proc.returncode,
            shutdown_seconds=exited_at - since,
            killed=killed,
            log_tail=self.log_tail(),
        )

    def kill(self) -> None:
        """SIGKILL the child by PID if it still runs, and reap it (bounded)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5.0)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        """Return the last ``lines`` lines of the child's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Replica:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


@attrs.frozen
class RollResult:
    """What one `rolling_restart` measured.

    Attributes:
        load: The load generator's counts over the whole roll.
        exits: How each old replica ended, in roll order.
        events: ``(seconds since the load started, what happened)``, in order.
    """

    load: LoadResult
    exits: tuple[ReplicaExit, ...]
    events: tuple[tuple[float, str], ...]

    @property
    def lost(self) -> int:
        """Requests that failed, of any kind."""
        return self.load.failed

    @property
    def max_shutdown_seconds(self) -> float:
        """Longest SIGTERM-to-exit time of the old replicas."""
        return max((e.shutdown_seconds for e in self.exits), default=0.0)

    @property
    def exit_codes(self) -> tuple[int | None, ...]:
        """Exit codes of the old replicas, in roll order."""
        return tuple(e.exit_code for e in self.exits)

    @property
    def lost_before_first_sigterm(self) -> int:
        """Failures before any replica was signalled: non-zero means the harness is broken."""
        first = next((t for t, what in self.events if what.startswith("SIGTERM")), None)
        if first is None:
            return self.load.failed
        return sum(1 for t, _ in self.load.failure_times if t < first)

    def timeline(self, gap: float = 0.1) -> str:
        """Return roll events interleaved with failures, grouped by kind within ``gap`` s."""
        entries: list[tuple[float, str]] = list(self.events)
        group: list[float] = []
        group_kind = ""
        for t, kind in (*self.load.failure_times, (float("inf"), "")):
            if group and (kind != group_kind or t - group[-1] > gap):
                span = f"{group[0]:.2f}..{group[-1]:.2f}s" if len(group) > 1 else ""
                entries.append((group[0], f"  {len(group)} x {group_kind} {span}".rstrip()))
                group = []
            group.append(t)
            group_kind = kind
        return "\n".join(f"{t:7.2f}  {what}" for t, what in sorted(entries))


class _Roll:
    """State of one roll: haproxy, replicas, slots, load, events."""

    def __init__(self, server_cmd: Sequence[str], lb: HAProxy, workdir: Path) -> None:
        self.server_cmd = server_cmd
        self.lb = lb
        self.workdir = workdir
        self.free_slots = deque(lb.slot_names)
        self.replicas: list[Replica] = []
        self.events: list[tuple[float, str]] = []
        self.count = 0

    def event(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    def start_replica(self) -> Replica:
        self.count += 1
        name = f"r{self.count}"
        replica = Replica(self.server_cmd, free_port(), self.workdir / f"{name}.log", name)
        self.replicas.append(replica)
        replica.start()
        return replica

    def bind_when_ready(self, replica: Replica, ready_timeout: float) -> str:
        try:
            replica.wait_ready(ready_timeout)
        except ReplicaError as exc:
            raise RollError(str(exc)) from None
        slot = self.free_slots.popleft()
        self.lb.bind(slot, replica.port)
        self.event(f"bind {replica.name} (port {replica.port}) to slot {slot}")
        return slot

    def wait_up(self, slot: str, up_timeout: float) -> None:
        try:
            self.lb.wait_up(slot, up_timeout)
        except RuntimeError as exc:
            raise RollError(f"{exc}\nhaproxy log:\n{self.lb.log_tail()}") from None
        self.event(f"haproxy: {slot} UP")

    def remove_endpoint_later(self, slot: str, lag: float) -> _Delayed:
        def remove() -> None:
            self.lb.set_state(slot, "maint")
            self.event(f"haproxy: {slot} maint (endpoint removed)")

        return _Delayed(lag, remove)

    def kill_all(self) -> None:
        """End every replica still running: SIGTERM, then SIGKILL past a bound.

        SIGTERM first, all at once: a supervisor replica (``lifecycle exec``)
        ends its own child then, where a SIGKILL would leave that child
        running (reparented to init) after the test.
        """
        running = [r for r in self.replicas if r.running()]
        for replica in running:
            replica.terminate()
        until = time.monotonic() + 15.0
        for replica in running:
            replica._exited.wait(max(0.0, until - time.monotonic()))
        for replica in self.replicas:
            replica.kill()


class _Delayed:
    """Runs ``action`` once, ``delay`` seconds from now, on its own thread."""

    def __init__(self, delay: float, action: Callable[[], None]) -> None:
        self._action = action
        self._error: BaseException | None = None
        self._timer = threading.Timer(delay, self._run)
        self._timer.daemon = True
        self._timer.start()

    def _run(self) -> None:
        try:
            self._action()
        except BaseException as exc:  # handed to finish() on the roll's thread
            self._error = exc

    def cancel(self) -> None:
        """Do not run the action if it has not started yet."""
        self._timer.cancel()

    def finish(self, timeout: float) -> None:
        """Wait (bounded) until the action ran; re-raise its error as `RollError`."""
        self._timer.join(timeout)
        if self._timer.is_alive():
            self._timer.cancel()
            raise RollError(f"a delayed roll action did not finish within {timeout} s")
        if self._error is not None:
            raise RollError(f"a delayed roll action failed: {self._error!r}") from self._error


def _pause_until(moment: float) -> None:
    # The roll is a real-time schedule (a warmup, the LB lag, a settle time):
    # these pauses are the thing being simulated, not waits for an event.
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="lifecycle-roll-") as tmp:
        yield Path(tmp)


def rolling_restart(
    server_cmd: Sequence[str],
    *,
    replicas: int = 2,
    lb_lag: float = 1.0,
    clients: int = 16,
    path: str = "/work?ms=50",
    warmup: float = 2.0,
    step_interval: float = 5.25,
    settle: float = 2.0,
    ready_timeout: float = 10.0,
    up_timeout: float = 10.0,
    exit_timeout: float = 15.0,
    max_requests: int = 500_000,
    request_timeout: float = 5.0,
    workdir: Path | None = None,
) -> RollResult:
    """Replace ``replicas`` replicas of ``server_cmd`` one by one behind haproxy, under load.

    ``server_cmd`` is an argv; the port goes in place of ``{port}`` or is
    appended. Replica logs and haproxy's config and log go to ``workdir`` (a
    temporary directory by default). Everything is bounded: a replica not
    ready in ``ready_timeout``, a slot not UP in ``up_timeout`` raises
    `RollError`; an old replica still running ``exit_timeout`` s after its
    SIGTERM is killed and reported as killed.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    # Slots are never reused: a fresh slot's check status says nothing until
    # haproxy has checked the new address (see HAProxy.bind).
    with (
        _workdir(workdir) as work,
        HAProxy(slots=2 * replicas, workdir=work) as lb,
    ):
        roll = _Roll(server_cmd, lb, work)
        stop = threading.Event()
        results: list[LoadResult] = []
        load_thread: threading.Thread | None = None
        try:
            olds = [roll.start_replica() for _ in range(replicas)]
            old_slots = [roll.bind_when_ready(r, ready_timeout) for r in olds]
            for slot in old_slots:
                roll.wait_up(slot, up_timeout)

            # A hard bound on the load, far beyond a roll that goes to plan.
            per_step = max(step_interval, lb_lag + ready_timeout + up_timeout + exit_timeout)
            load_bound = warmup + replicas * per_step + settle + 10.0
            load_thread = threading.Thread(
                target=lambda: results.append(
                    run_load(
                        "127.0.0.1",
                        lb.port,
                        clients=clients,
                        path=path,
                        duration=load_bound,
                        max_requests=max_requests,
                        stop_event=stop,
                        request_timeout=request_timeout,
                    )
                ),
                name="roll-load",
                daemon=True,
            )
            load_start = time.monotonic()
            load_thread.start()
            roll.event("load started")

            exits: list[ReplicaExit] = []
            for k, (old, old_slot) in enumerate(zip(olds, old_slots, strict=True)):
                _pause_until(load_start + warmup + k * step_interval)
                old.terminate()
                roll.event(f"SIGTERM {old.name} (slot {old_slot})")
                # The endpoint removal runs on its own clock, concurrently
                # with the replacement's start, as in Kubernetes.
                removal = roll.remove_endpoint_later(old_slot, lb_lag)
                new = roll.start_replica()
                roll.event(f"start {new.name}")
                try:
                    new_slot = roll.bind_when_ready(new, ready_timeout)
                    roll.wait_up(new_slot, up_timeout)
                except BaseException:
                    removal.cancel()
                    raise
                removal.finish(lb_lag + 5.0)
                exit_ = old.wait_exit(exit_timeout)
                exits.append(exit_)
                assert old.sigterm_at is not None
                roll.events.append(
                    (
                        old.sigterm_at + exit_.shutdown_seconds,
                        f"{old.name} exited {exit_.exit_code}"
                        + (" (KILLED after bound)" if exit_.killed else ""),
                    )
                )
            _pause_until(time.monotonic() + settle)
        finally:
            stop.set()
            if load_thread is not None:
                load_thread.join(timeout=3 * request_timeout + 2.0)
            roll.kill_all()
        if not results:
            raise RollError("the load generator did not finish within its bound")
        load = results[0]
        events = tuple(sorted((t - load.started, what) for t, what in roll.events))
        return RollResult(load=load, exits=tuple(exits), events=events)
