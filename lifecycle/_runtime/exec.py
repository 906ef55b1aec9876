"""``lifecycle exec``: run a command as the one child of a lifecycle `App`.

lifecycle becomes the process that receives SIGTERM (PID 1 in a container)
and the command -- gunicorn, a Node server, anything -- its child. The App
has one component, ``child``, so health, the stop sequence and the exit code
are the App's:

* ``start``: spawn the command in its own process group (a terminal's
  Ctrl-C then reaches lifecycle only, not the child behind its back); a
  command that is not found is exit 127, one that cannot be executed 126, as
  in a shell.
* ``ready()``: True while the child runs -- and, with ``--ready-port
  PORT``, once a TCP connection to that port on loopback succeeds (the child
  is listening). ``--health PORT`` serves ``/livez``, ``/readyz``,
  ``/startupz`` and ``/status`` (`HealthServer`).
* SIGTERM or SIGINT (or SIGPWR and SIGRTMIN+3, what inits are asked to
  shut down with: `STOPPING`): readiness 503 at once; the child keeps serving for the
  drain delay (load balancers notice); then the stop signal (SIGTERM) goes
  to the child, followed by SIGCONT (a child stopped by SIGTTIN or SIGSTOP
  could not act on it otherwise); up to the stop timeout for it to exit (at
  least `STOP_FLOOR`, so that ``--stop-timeout 0`` still lets a child that
  exits at once exit); then SIGKILL to its whole process group (a master's
  workers are never left behind) and exit code `ExitCode.TIMEOUT` (3). A
  second SIGTERM/SIGINT more than 1 s after the first kills the group at
  once and exits 128 + signum. A SIGTERM/SIGINT that arrives before the
  child was started (``python -m lifecycle`` blocks them from the moment
  its ``exec`` command begins until the handlers are in place, so that
  none is lost even as PID 1) starts no child: exit 128 + signum.
* SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGTTIN, SIGTTOU, and every
  other signal whose default action would end lifecycle and orphan the
  child (SIGALRM, SIGXCPU, the real-time ones ...: `FORWARDED`) are forwarded
  to the child's PID as they come (gunicorn: reload, quick stop, reopen
  logs, upgrade, stop workers, add and remove a worker). Not to the group:
  a master passes them on to its workers as it sees fit, and gunicorn's
  workers would die of a SIGHUP or stop on a SIGTTIN sent to them directly.
  Every signal is acted on, in the order the kernel delivered them: the
  C-level handler writes each signal's number to a socket the main thread
  waits on (``signal.set_wakeup_fd``), and the main thread reads them in
  that order, whichever thread the kernel interrupted; lifecycle's own
  threads block them (`helper_thread`). Signals pending at the same moment
  come in no order the kernel promises (Linux runs the handler of the
  higher-numbered one first), and two of one kind are one, as for any
  process; of those read together, the forwarded ones go on first, then
  the stop begins.
* The child exiting on its own: lifecycle exits at once with its code (no
  drain delay: nothing is left to drain), 128 + N when a signal N killed it.
* The rest of the child's process group: once the child has exited (by
  itself or on the stop signal), what is left in its group gets SIGTERM
  (and SIGCONT), then SIGKILL after the stop timeout, `GROUP_GRACE` at
  most: nothing the child started in its group outlives lifecycle.
* Zombies: every child is reaped (``waitpid(-1)``), and on Linux lifecycle
  makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so that the
  orphans of the child's own children are reparented to it and reaped, as
  PID 1 does.

The drain delay is spent in the child's ``stop``, not as the App's
``drain_delay``: a child that exits during it ends the wait at once.

Added in 0.2.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from types import FrameType
from typing import Final

import attrs

from .._core.errors import ConfigError, DeadlineExceeded, StartupError
from .._core.log import get_logger
from .._core.states import ExitCode
from .._core.threads import helper_thread
from .._core.tokens import CancelToken
from .app import App
from .children import (
    KILL_WAIT,
    REFUSED_STOP_SIGNALS,
    STOP_FLOOR,
    become_subreaper,
    check_stop_signal,
    exit_status,
    send_stop,
    signal_child,
    signals_blocked,
    stop_seconds,
    wait_event,
    wait_or_kill,
)
from .exec_signals import FORWARDED, STOPPING
from .runners import ThreadedRunner
from .signals import signal_name
from .systemd import notify_for_process

__all__ = [
    "FORWARDED",
    "GROUP_GRACE",
    "KILL_WAIT",
    "MAX_SECONDS",
    "NOT_EXECUTABLE",
    "NOT_FOUND",
    "REFUSED_STOP_SIGNALS",
    "STOPPING",
    "STOP_FLOOR",
    "ChildKilled",
    "ChildProcess",
    "ExecOptions",
    "become_subreaper",
    "check_stop_signal",
    "exec_command",
    "exit_status",
]

_log = get_logger()

NOT_FOUND: Final = 127
"""Exit code when the command is not found (as a shell's)."""
NOT_EXECUTABLE: Final = 126
"""Exit code when the command exists but cannot be executed (as a shell's)."""
READY_CONNECT_TIMEOUT: Final = 0.5
"""Seconds the readiness check's TCP connection to ``--ready-port`` may take."""
SIGNAL_GRACE: Final = 1.0
"""Seconds after the first SIGTERM/SIGINT within which repeats count as one."""
GROUP_GRACE: Final = 2.0
"""Seconds at most that what is left of the child's process group, once the child
exited, has between SIGTERM and SIGKILL (the stop timeout when shorter)."""
MAX_SECONDS: Final = 365 * 86400.0
"""The longest drain delay or stop timeout accepted, in seconds (a year): far below what
a thread can wait (``threading.TIMEOUT_MAX``)."""

# Reset to their defaults in the child: Python ignores SIGPIPE and SIGXFSZ,
# and a disposition of "ignore" survives exec.
_RESET_IN_CHILD: Final = (*FORWARDED, *STOPPING, signal.SIGPIPE, signal.SIGXFSZ)


class ChildKilled(DeadlineExceeded):
    """The child outlived its stop timeout and was killed (SIGKILL to its process group).

    Raised by `ChildProcess.stop`, so that the App's exit code is TIMEOUT.

    Example::

        try:
            child.stop(token)
        except ChildKilled as killed:
            print(killed)   # names the command and the timeout
    """

    def __init__(self, command: str, pid: int, stop_signal: str, waited: float) -> None:
        self.cut = [f"{command} (pid {pid})"]
        TimeoutError.__init__(
            self,
            f"child {command!r} (pid {pid}) did not exit within {waited:g} s of {stop_signal}; "
            f"its process group was killed (SIGKILL). Raise --stop-timeout, or make the "
            f"command exit on {stop_signal} within it",
        )


def _check_seconds(attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value <= MAX_SECONDS:
        raise ValueError(
            f"{attribute.name} must be a number of seconds from 0 to {MAX_SECONDS:.0f} "
            f"(365 days), got {value!r}"
        )


@attrs.frozen
class ExecOptions:
    """What ``lifecycle exec`` was asked for.

    Attributes:
        argv: the command and its arguments.
        drain_delay: seconds between readiness turning 503 and the stop signal.
        stop_timeout: seconds the child has to exit after the stop signal.
        stop_signal: the signal that asks the child to stop.
        health: ``(host, port)`` of the health endpoint, or None.
        ready_port: readiness also needs a TCP connection to this port on
            127.0.0.1 to succeed; None: the child running is enough.

    Example::

        ExecOptions(["gunicorn", "app:wsgi"], drain_delay=5, health=("0.0.0.0", 8081))
    """

    argv: Sequence[str] = attrs.field(converter=tuple)
    drain_delay: float = attrs.field(default=0.0, validator=lambda _, a, v: _check_seconds(a, v))
    stop_timeout: float = attrs.field(default=10.0, validator=lambda _, a, v: _check_seconds(a, v))
    stop_signal: signal.Signals = attrs.field(
        default=signal.SIGTERM, validator=lambda _, a, v: check_stop_signal(v)
    )
    health: tuple[str, int] | None = None
    ready_port: int | None = None


class ChildProcess:
    """A component that is one child process: spawned at start, signalled and reaped at stop.

    ``run`` returns when the child exits (the App then shuts down: a critical
    run that returns ends the app); ``stop`` waits ``drain_delay`` (ended
    early by the child's exit), sends ``stop_signal`` to the child, waits
    ``stop_timeout`` and then SIGKILLs its process group, raising
    `ChildKilled`. The child's ``waitpid`` status is `status` once it exited.

    A reaper thread collects every child of this process (``waitpid(-1)``),
    the child's orphans too: there must be no other code in the process that
    waits for children of its own.

    Example::

        child = ChildProcess(["gunicorn", "app:wsgi"], drain_delay=5, stop_timeout=25)
        app.add(child, name="child", stop_timeout=child.stop_budget)
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        drain_delay: float = 0.0,
        stop_timeout: float = 10.0,
        stop_signal: int = signal.SIGTERM,
        ready_port: int | None = None,
    ) -> None:
        if not argv:
            raise ValueError("ChildProcess needs a command: give its argv, e.g. ['gunicorn', ...]")
        self.argv = tuple(argv)
        self.drain_delay = drain_delay
        self.stop_timeout = stop_timeout
        self.stop_signal = signal.Signals(stop_signal)
        self.ready_port = ready_port
        self.pid: int | None = None
        self.status: int | None = None
        """The child's ``waitpid`` status once it was reaped, else None."""
        self.killed = False
        """True once the stop had to SIGKILL the child's process group."""
        self.exited_by_itself = False
        """True when the child exited before the stop signalled it."""
        self._signalled = False
        self._lock = threading.Lock()  # pid/status against the signal forwarding
        self._reaped = threading.Event()  # the child was reaped: status is set
        self._wake_run = threading.Event()  # reaped, or the run token cancelled

    @property
    def command(self) -> str:
        """The command's name, for messages."""
        return self.argv[0]

    @property
    def stop_budget(self) -> float:
        """The longest ``stop`` can take: drain, stop timeout, the kill."""
        return self.drain_delay + self.stop_timeout + KILL_WAIT

    def start(self) -> None:
        """Spawn the command (unless `spawn` did already)."""
        if self.pid is None:
            self.spawn()

    def spawn(self) -> None:
        """Spawn the command in its own process group; start reaping.

        Raises:
            FileNotFoundError: the command, or the interpreter its ``#!`` line
                names, is not found.
            PermissionError: it cannot be executed.
            OSError: ENOEXEC, not an executable format; any other spawn error.
        """
        pid = os.posix_spawnp(
            self.argv[0],
            self.argv,
            os.environ,
            setpgroup=0,
            setsigdef=_RESET_IN_CHILD,
            setsigmask=(),
        )
        with self._lock:
            self.pid = pid
        threading.Thread(
            target=helper_thread(self._reap), name="lifecycle:exec reaper", daemon=True
        ).start()
        _log.info("child started", component="child", pid=pid, command=" ".join(self.argv))

    def ready(self) -> bool:
        """True while the child runs (and, with `ready_port`, accepts connections there)."""
        if self.pid is None or self._reaped.is_set():
            return False
        if self.ready_port is None:
            return True
        try:
            socket.create_connection(
                ("127.0.0.1", self.ready_port), timeout=READY_CONNECT_TIMEOUT
            ).close()
        except OSError:
            return False
        return True

    def run(self, token: CancelToken) -> None:
        """Return when the child exits, or when the token is cancelled (the stop began).

        The calling thread blocks the asynchronous signals meanwhile (its mask
        is put back on return), so that the kernel delivers them elsewhere.
        """
        detach = token.on_cancel(self._wake_run.set)
        try:
            with signals_blocked():
                self._wake_run.wait()
        finally:
            detach()

    def stop(self, token: CancelToken) -> None:
        """Drain, send the stop signal, wait, kill the group if it must.

        Raises:
            ChildKilled: the child outlived ``stop_timeout`` and was killed.
        """
        with signals_blocked():
            self._stop(token)

    def _stop(self, token: CancelToken) -> None:
        if self.status is not None:
            return
        if self.drain_delay > 0:
            _log.info("draining", component="child", seconds=self.drain_delay)
            if self._wait_exit(self.drain_delay, token):
                return
        pid = self.pid
        if pid is None:
            return
        self._signalled = True
        send_stop([self], self.stop_signal)
        _log.info("child signalled", component="child", pid=pid, signal=self.stop_signal.name)
        waited = stop_seconds(max(self.stop_timeout, STOP_FLOOR), token, floor=STOP_FLOOR)
        if wait_or_kill([self], waited):
            raise ChildKilled(self.command, pid, self.stop_signal.name, self.stop_timeout)

    def _wait_exit(self, seconds: float, token: CancelToken | None, floor: float = 0.0) -> bool:
        """Wait until the child was reaped, up to ``seconds`` and the token's deadline.

        ``floor``: seconds waited at least, even past the token's deadline.
        """
        return wait_event(self._reaped, stop_seconds(seconds, token, floor))

    def wait_exit(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the child to be reaped; True once it is."""
        return wait_event(self._reaped, seconds)

    def send(self, signum: int) -> bool:
        """Send ``signum`` to the child's PID if it still runs; True if sent."""
        with self._lock:
            return self.status is None and signal_child(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the child's whole process group: `kill_group`."""
        self.kill_group()

    def kill_group(self) -> None:
        """SIGKILL the child's whole process group (what is left of it)."""
        with self._lock:
            if self.pid is None:
                return
            self.killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        _log.warning("child killed", component="child", pid=self.pid, signal="SIGKILL")

    def _group_alive(self) -> bool:
        """Whether a process is left in the child's process group (zombies reaped first)."""
        pid = self.pid
        if pid is None:
            return False
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:  # the reaper may be gone: no children then
                pass
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def end_group(self) -> None:
        """Once the child exited: SIGTERM what is left of its process group, SIGKILL it later.

        The stop timeout (`GROUP_GRACE` at most) between the two. Returns
        when the group is empty, or `KILL_WAIT` after the SIGKILL.
        """
        pid = self.pid
        if pid is None or not self._reaped.is_set() or not self._group_alive():
            return
        _log.warning(
            "ending the rest of the child's process group",
            component="child",
            pgid=pid,
            signal="SIGTERM",
        )
        for signum in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signum)
        if self._group_gone(min(self.stop_timeout, GROUP_GRACE)):
            return
        _log.warning("child's process group killed", component="child", pgid=pid, signal="SIGKILL")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self._group_gone(KILL_WAIT)

    def _group_gone(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        done = threading.Event()  # never set: a bounded pause between two checks
        while self._group_alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            done.wait(min(0.01, left))
        return True

    def _reap(self) -> None:
        # Invariant: the child's status is set under the lock, so that
        # `send` never signals a PID the kernel may have given to another.
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            except ChildProcessError:
                return
            if pid != self.pid:
                _log.debug("orphan reaped", component="child", pid=pid)
                continue
            with self._lock:
                self.status = status
                self.exited_by_itself = not self._signalled
            self._reaped.set()
            self._wake_run.set()
            _log.info(
                "child exited",
                component="child",
                pid=pid,
                exit_code=exit_status(status),
                by_itself=self.exited_by_itself,
            )


class _Wakeup:
    """The socket the C-level signal handler writes each signal's number to, in delivery order.

    ``signal.set_wakeup_fd`` points at its writing end; the main thread waits
    on the reading end and reads the numbers in the order the handler ran,
    whichever thread the kernel interrupted. `wake` writes a zero byte (no
    signal) from another thread.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        for end in (self._reader, self._writer):
            end.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._reader, selectors.EVENT_READ)
        self._previous: int | None = None

    def install(self) -> None:
        self._previous = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            self._writer.send(b"\0")

    def read(self, timeout: float) -> list[int]:
        """The signal numbers written since the last read, waiting up to ``timeout`` for one."""
        if not self._selector.select(timeout):
            return []
        data = b""
        while True:
            try:
                chunk = self._reader.recv(4096)
            except OSError:  # empty
                break
            if not chunk:
                break
            data += chunk
        return [byte for byte in data if byte]

    def restore(self) -> None:
        if self._previous is not None:
            signal.set_wakeup_fd(self._previous)
            self._previous = None
        self._selector.close()
        self._reader.close()
        self._writer.close()


_WAIT_SLICE: Final = 0.5  # bounds the main thread's wait should the wake-up fd be replaced


class _Supervisor:
    """The process's signal handling around the App's run."""

    def __init__(self, options: ExecOptions, blocked: Iterable[int] = ()) -> None:
        self.options = options
        self.child = ChildProcess(
            options.argv,
            drain_delay=options.drain_delay,
            stop_timeout=options.stop_timeout,
            stop_signal=options.stop_signal,
            ready_port=options.ready_port,
        )
        budget = self.child.stop_budget
        # The plan counts a component with run and stop twice (run, then
        # stop); run returns at once when its phase begins, stop bounds itself.
        self.app = App(
            "exec",
            shutdown_timeout=2 * budget + 1.0,
            stop_timeout=budget,
            health=options.health,
        )
        self.app.add(self.child, name="child", stop_timeout=budget)
        self.finished = threading.Event()
        self.code = 0
        self._first: float | None = None
        self._previous: dict[int, object] = {}
        self._blocked = frozenset(blocked)  # blocked by the caller until the handlers are in
        self._wakeup: _Wakeup | None = None

    # Runs in the main thread between two bytecodes: nothing. The C-level
    # handler has written the signal's number to the wake-up socket, which
    # the main loop reads in delivery order.
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        pass

    def install(self) -> None:
        self._wakeup = _Wakeup()
        self._wakeup.install()
        for signum in (*STOPPING, *FORWARDED):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        if self._blocked:  # what arrived meanwhile is delivered now, to the handlers
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._blocked)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(signum, handler)  # type: ignore[arg-type]
        if self._wakeup is not None:
            self._wakeup.restore()
            self._wakeup = None

    def run(self) -> int:
        become_subreaper()
        self.install()
        try:
            return self._run()
        finally:
            self.restore()

    def _run(self) -> int:
        wakeup = self._wakeup
        assert wakeup is not None
        early = [signum for signum in wakeup.read(0) if signum in STOPPING]
        if early:
            _log.warning(
                "stopped before the child was started",
                signal=signal_name(early[0]),
                command=self.child.command,
            )
            return 128 + early[0]
        unusable = self._precheck()
        if unusable is not None:
            return unusable
        # Spawned here, not in the App's start: a command that cannot be
        # executed is one line and its exit code (as in a shell), with no
        # component's traceback and no summary of an App that never ran.
        try:
            self.child.spawn()
        except OSError as error:
            return self._spawn_failed(error)
        runner = ThreadedRunner(self.app, signals=None)
        notify_for_process(runner)  # exec owns the process: it speaks to systemd (if asked)
        try:
            runner.start()
        except StartupError:
            return self._startup_failed(runner)

        def wait() -> None:
            self.code = runner.wait()
            self.finished.set()
            wakeup.wake()

        threading.Thread(
            target=helper_thread(wait), name="lifecycle:exec wait", daemon=True
        ).start()
        while not self.finished.is_set():
            batch = wakeup.read(_WAIT_SLICE)
            # Read together, they were pending together: forward first, then stop.
            for signum in [s for s in batch if s not in STOPPING]:
                if self.child.send(signum):
                    _log.info("signal forwarded", component="child", signal=signal_name(signum))
            for signum in [s for s in batch if s in STOPPING]:
                forced = self._on_stop_signal(signum)
                if forced is not None:
                    return forced
        self.child.end_group()
        code = self._exit_code(self.code)
        if code != self.code:  # the App's summary said its own code
            _log.info("exit code is the child's", exit_code=code, command=self.child.command)
        return code

    def _precheck(self) -> int | None:
        """What can be told before the App starts: the command, the health port; else None."""
        command = self.child.command
        if os.sep in command:
            if not os.path.exists(command):
                return self._not_found()
            if os.path.isdir(command) or not os.access(command, os.X_OK):
                return self._not_executable("permission denied")
        elif shutil.which(command) is None:
            return self._not_found()
        health = self.options.health
        if health is not None and health[1] != 0:
            try:
                family = socket.AF_INET6 if ":" in health[0] else socket.AF_INET
                socket.create_server(health, family=family).close()
            except OSError as error:
                print(
                    f"lifecycle exec: --health {health[0]}:{health[1]}: cannot listen there "
                    f"({error.strerror or error}); choose another port with --health",
                    file=sys.stderr,
                )
                return int(ExitCode.CONFIG)
        return None

    def _not_found(self) -> int:
        print(
            f"lifecycle exec: {self.child.command}: command not found (searched PATH="
            f"{os.environ.get('PATH', os.defpath)}); give the full path or install it",
            file=sys.stderr,
        )
        return NOT_FOUND

    def _not_executable(self, reason: str) -> int:
        print(
            f"lifecycle exec: {self.child.command}: cannot execute ({reason}); "
            f"make it executable (chmod +x) or name its interpreter",
            file=sys.stderr,
        )
        return NOT_EXECUTABLE

    def _on_stop_signal(self, signum: int) -> int | None:
        """A repeat of SIGTERM/SIGINT past the grace forces the exit: its code, else None."""
        first = self._first
        if first is None:
            self._first = time.monotonic()
            self.app.request_shutdown(f"signal {signal_name(signum)}")
            return None
        if time.monotonic() - first < SIGNAL_GRACE:
            return None
        _log.critical("forced exit", app=self.app.name, signal=signal_name(signum))
        self.child.kill_group()
        self.child._wait_exit(KILL_WAIT, None)
        return 128 + signum

    def _startup_failed(self, runner: ThreadedRunner) -> int:
        runner.wait()
        if not self.child.wait_exit(0):  # started, then the App's startup failed
            self.child.kill_group()
            self.child.wait_exit(KILL_WAIT)
        error = self.app.components["child"].error
        print(f"lifecycle exec: {self.child.command}: could not start: {error}", file=sys.stderr)
        return int(ExitCode.FAILED)

    def _spawn_failed(self, error: OSError) -> int:
        command = self.child.command
        if isinstance(error, FileNotFoundError):
            path = command if os.sep in command else shutil.which(command)
            if path is None or not os.path.exists(path):
                return self._not_found()
            # The file is there: what its #! line names (or, for a binary, its
            # loader) is not.
            interpreter = _interpreter(path)
            needs = (
                f"the interpreter its #! line names, {interpreter}, is not found; "
                f"install it or fix that line"
                if interpreter
                else "a file it needs to run (its loader) is not found"
            )
            print(f"lifecycle exec: {command}: cannot execute: {needs}", file=sys.stderr)
            return NOT_FOUND
        if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.ENOEXEC):
            return self._not_executable(str(error.strerror))
        print(f"lifecycle exec: {command}: could not start: {error}", file=sys.stderr)
        return int(ExitCode.FAILED)

    def _exit_code(self, app_code: int) -> int:
        child = self.child
        if child.killed:
            return int(ExitCode.TIMEOUT)
        if child.status is not None:
            return exit_status(child.status)
        return app_code


def _interpreter(path: str) -> str | None:
    """The interpreter a script's ``#!`` line names; None for no such line (or unreadable)."""
    try:
        with open(path, "rb") as file:
            head = file.readline(4096)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split()
    return words[0].decode(errors="replace") if words else None


def exec_command(options: ExecOptions, *, blocked: Iterable[int] = ()) -> int:
    """Run ``options.argv`` as the one child of a lifecycle App; return the exit code.

    The exit code: the child's own (128 + N if a signal N killed it); 3
    (`ExitCode.TIMEOUT`) if it had to be killed after its stop timeout; 127
    if the command is not found, 126 if it cannot be executed; 128 + signum
    if a second SIGTERM/SIGINT forced the exit, or if one arrived before the
    child was started (none is then); 2 if the health port cannot be bound.
    Each of lifecycle's own codes comes with a line on stderr naming it.

    ``blocked``: signals the caller blocked (``pthread_sigmask``) so that
    none is lost before the handlers are installed; they are unblocked
    once they are, and the ones pending are acted on.

    Example::

        sys.exit(exec_command(ExecOptions(["gunicorn", "app:wsgi"], drain_delay=5)))
    """
    try:
        return _Supervisor(options, blocked).run()
    except ConfigError as error:
        print(f"lifecycle exec: {error}", file=sys.stderr)
        return int(ExitCode.CONFIG)
