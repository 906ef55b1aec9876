"""systemd's notification protocol (``sd_notify``), spoken by the runner that owns the process.

Under a unit with ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path,
or an abstract socket written ``@name``) and, with ``WatchdogSec=``,
``WATCHDOG_USEC`` and ``WATCHDOG_PID``. A runner that owns the process
(`lifecycle.run`; `notify_for_process` for a runner that speaks for it
otherwise) then sends, as one datagram each:

* ``READY=1`` and ``STATUS=running (N components)`` once the app is RUNNING;
* ``STOPPING=1`` as the shutdown begins (DRAINING or STOPPING, whichever
  comes first), with ``STATUS=`` naming the phase and the reason
  (``draining 5s (signal SIGTERM)``, ``stopping: api, db (signal SIGTERM)``)
  and ``EXTEND_TIMEOUT_USEC=``: the time left until the app's shutdown
  deadline plus the watchdog's `MARGIN`. A unit whose ``TimeoutStopSec=`` is
  shorter than the app's shutdown then is not killed mid-drain, and never
  waits for it past lifecycle's own deadline;
* ``STATUS=`` with each change of phase, and the final one
  (``stopped, exit code 0``, with no extension);
* when the process ends without the app reaching that state, a last
  ``STATUS=`` saying why: ``forced exit by a second SIGTERM, exit code
  143``, or ``shutdown deadline missed, exit code 3``.

One lifecycle thread (``lifecycle:NAME.systemd``, a `helper_thread`) sends
what is periodic: ``EXTEND_TIMEOUT_USEC=`` again about once a second while
the shutdown is within its deadline (an unbounded ``shutdown_timeout``
extends in steps of `UNBOUNDED_STEP` seconds, never by an infinite value),
with a fresh ``STATUS=`` when it changed; and ``WATCHDOG=1`` every
``WATCHDOG_USEC / 2`` -- but only while the runner's control loop turns.
Each ping certifies a wake-up (a ``tick`` event) the thread posted to the
control loop one interval before, answered on the control loop's own thread
(the runner's clock, read at every turn, notes it in a plain attribute): an
``async def`` blocking the asyncio runner's loop with ``time.sleep`` stops
the pings, and systemd's watchdog restarts the service.

Sending never stands in a shutdown's way: one ``AF_UNIX``/``SOCK_DGRAM``
socket, ``sendto(..., MSG_DONTWAIT)``, a few microseconds on the control
thread; a failed send logs one WARNING and later ones are dropped silently.

The environment is left alone (no ``unset_environment``): reading it is all
lifecycle does, and changing ``os.environ`` while other threads may read the
C-level environment is a data race; a process the app starts on purpose
(a helper that calls ``systemd-notify``) may need the variables; and
``NotifyAccess=main`` (the documented unit) makes systemd ignore a child's
messages, while ``WATCHDOG_PID`` keeps a child from pinging for us.

Added in 0.4.
"""

from __future__ import annotations

import errno
import math
import os
import queue
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from .._core.drain import drain_bounds
from .._core.log import get_logger
from .._core.states import AppState, ComponentState
from .signals import helper_thread
from .watchdog import MARGIN, wait_timeout

if TYPE_CHECKING:
    from .runners import _Driver

__all__ = [
    "EXTEND_EVERY",
    "NO_NOTIFIER",
    "UNBOUNDED_STEP",
    "Notifier",
    "SystemdNotifier",
    "extend_usec",
    "notifier_for",
    "notify_for_process",
    "parse_notify_socket",
    "watchdog_interval",
]

_log = get_logger()

EXTEND_EVERY = 1.0
"""Seconds between two ``EXTEND_TIMEOUT_USEC=`` messages during the shutdown."""

UNBOUNDED_STEP = 10.0
"""Seconds one ``EXTEND_TIMEOUT_USEC=`` grants when the shutdown has no deadline
(``shutdown_timeout=math.inf``): re-sent every `EXTEND_EVERY`, so systemd's stop
timeout keeps moving while the process lives, and expires soon after it stops sending."""

STATUS_NAMES = 5
"""At most this many component names in a ``STATUS=stopping: ...`` line."""

_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes, the last one NUL
_LIVE = (
    ComponentState.STARTING,
    ComponentState.RUNNING,
    ComponentState.RESTARTING,
    ComponentState.STOPPING,
)

Address = str | bytes


def parse_notify_socket(value: str | None) -> Address | None:
    r"""The address ``NOTIFY_SOCKET`` names: a path, ``@name`` (abstract), or None when unset.

    Raises:
        ValueError: any other value (a relative path, ``vsock:``, a path too
            long for ``AF_UNIX``, an abstract name where the platform has none);
            the message names the variable and the value.

    Example::

        >>> parse_notify_socket("/run/systemd/notify")
        '/run/systemd/notify'
        >>> parse_notify_socket("@/org/freedesktop/systemd1/notify")
        b'\x00/org/freedesktop/systemd1/notify'
        >>> parse_notify_socket(None) is None
        True
    """
    if not value:
        return None
    if value.startswith("/"):
        if len(os.fsencode(value)) > _SUN_PATH_MAX:
            raise ValueError(
                f"NOTIFY_SOCKET={value!r} is longer than an AF_UNIX address can be "
                f"({_SUN_PATH_MAX} bytes); nothing is sent to systemd"
            )
        return value
    if value.startswith("@") and len(value) > 1:
        if not sys.platform.startswith("linux"):
            raise ValueError(
                f"NOTIFY_SOCKET={value!r} names an abstract socket, which only Linux has; "
                f"nothing is sent to systemd"
            )
        name = b"\0" + os.fsencode(value[1:])
        if len(name) > _SUN_PATH_MAX + 1:
            raise ValueError(
                f"NOTIFY_SOCKET={value!r} is longer than an AF_UNIX address can be; "
                f"nothing is sent to systemd"
            )
        return name
    raise ValueError(
        f"NOTIFY_SOCKET={value!r} is neither an absolute path nor an abstract socket "
        f"('@name'); nothing is sent to systemd"
    )


def watchdog_interval(usec: str | None, pid: str | None, my_pid: int) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``; None for none.

    None when ``WATCHDOG_USEC`` is unset, or ``WATCHDOG_PID`` is set to
    another process (the variables were inherited from the service's main
    process, which pings for itself).

    Raises:
        ValueError: ``WATCHDOG_USEC`` is not a positive integer, or
            ``WATCHDOG_PID`` not a positive integer; the message names it.

    Example::

        >>> watchdog_interval("4000000", None, os.getpid())
        2.0
        >>> watchdog_interval("4000000", "1", 4242) is None
        True
    """
    if usec is None or usec == "":
        return None
    if pid:
        if not pid.isdigit() or int(pid) <= 0:
            raise ValueError(
                f"WATCHDOG_PID={pid!r} is not a process id; no watchdog pings are sent"
            )
        if int(pid) != my_pid:
            return None
    if not usec.isdigit() or int(usec) <= 0:
        raise ValueError(
            f"WATCHDOG_USEC={usec!r} is not a positive number of microseconds; "
            f"no watchdog pings are sent"
        )
    return int(usec) / 2_000_000


def extend_usec(deadline: float | None, now: float) -> int | None:
    """The ``EXTEND_TIMEOUT_USEC=`` value at ``now``: until ``deadline`` plus `MARGIN`.

    None when there is no deadline yet or it has passed (no more extending:
    past it, the watchdog ends the run within `MARGIN`). An unbounded
    deadline (``math.inf``, or beyond what a thread can wait) grants
    `UNBOUNDED_STEP` seconds.

    Example::

        >>> extend_usec(1010.0, 1000.0)
        10500000
        >>> extend_usec(1010.0, 1010.0) is None
        True
        >>> extend_usec(math.inf, 1000.0)
        10000000
    """
    if deadline is None or now >= deadline:
        return None
    left = deadline - now
    if math.isnan(left) or wait_timeout(left) is None:  # inf, or beyond any wait
        return int(UNBOUNDED_STEP * 1_000_000)
    return round((left + MARGIN) * 1_000_000)


class _Owner(Protocol):
    """What the notifier reads of the runner (`_DriverOwner`; a fake in tests)."""

    def speaks(self) -> bool:
        """Whether the runner speaks for the process (checked on the control thread)."""

    def deadline(self) -> float | None:
        """The app's shutdown deadline (the runner's clock), None before a request."""

    def state(self) -> AppState:
        """The app's state now."""

    def status(self, state: AppState) -> str:
        """The ``STATUS=`` text for ``state``."""

    def probe(self) -> None:
        """Post a wake-up to the control loop (from the notifier's thread)."""

    def in_control(self) -> bool:
        """Whether the calling thread is the control loop's."""


class Notifier:
    """What a runner calls; this base does nothing (no systemd, or not the process's owner).

    Example::

        notifier = NO_NOTIFIER
        notifier.app_moved(AppState.RUNNING, time.monotonic())  # sends nothing
        notifier.close()
    """

    def app_moved(self, after: AppState, now: float) -> None:
        """The app entered ``after`` (on the control thread, at ``now``)."""

    def close(self) -> None:
        """The runner is done: send nothing more."""

    def last_word(self, status: str) -> None:
        """The process ends at once (a forced exit): send ``STATUS=status`` now, then no more."""


_ENDED: Final = frozenset({AppState.STOPPED, AppState.FAILED})

NO_NOTIFIER = Notifier()
"""The notifier of a runner that sends nothing."""


class SystemdNotifier(Notifier):
    """Sends the app's states to systemd's ``NOTIFY_SOCKET``; see the module's docstring.

    Args:
        name: the app's name (for the thread's name).
        address: where to send (`parse_notify_socket`).
        owner: the runner, as the notifier reads it.
        watchdog: seconds between ``WATCHDOG=1`` pings (`watchdog_interval`),
            None for none.
        clock: the runner's monotonic clock.

    Example::

        notifier = SystemdNotifier("shop", "/run/systemd/notify", owner=owner, watchdog=None)
        notifier.start()
        notifier.app_moved(AppState.RUNNING, time.monotonic())   # READY=1
        notifier.close()
    """

    def __init__(
        self,
        name: str,
        address: Address,
        *,
        owner: _Owner,
        watchdog: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.watchdog = watchdog
        self._owner = owner
        self._clock = clock
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._inbox: queue.SimpleQueue[bool] = queue.SimpleQueue()  # False: stop
        self._warned = threading.Lock()  # acquired once, by the first failed send
        self._bug_reported = threading.Lock()  # acquired once, by the first failed step
        self._closed = False
        # Written by the control thread, read by the notifier's thread.
        self._active = False  # the runner spoke (READY or STOPPING): the thread may send
        self._stopping = False  # STOPPING=1 was sent
        self._last_status: str | None = None
        # The liveness handshake: the thread sets `_probe_out` and posts a
        # wake-up; the control loop's next turn (its clock) sets `_answered`.
        self._probe_out = False
        self._answered = False
        # The notifier's thread's own.
        self._next_ping: float | None = None
        self._next_extend: float | None = None
        self._extend_over = False
        self._thread = threading.Thread(
            target=helper_thread(self._main), name=f"lifecycle:{name}.systemd", daemon=True
        )

    @property
    def where(self) -> str:
        """The address as ``NOTIFY_SOCKET`` wrote it (``@name`` for an abstract one)."""
        address = self.address
        if isinstance(address, bytes):
            return "@" + os.fsdecode(address[1:])
        return address

    def start(self) -> None:
        """Start the thread that sends what is periodic (it waits for the first `app_moved`)."""
        self._thread.start()

    def turning(self, clock: Callable[[], float]) -> Callable[[], float]:
        """``clock``, noting each call on the control loop's thread that answers a probe.

        The runner reads its clock at every turn of its control loop; a
        probe the notifier's thread posted is answered by the next one.
        """

        def stamped() -> float:
            if self._probe_out and self._owner.in_control():
                self._probe_out = False
                self._answered = True
            return clock()

        return stamped

    def app_moved(self, after: AppState, now: float) -> None:
        """Send what the app's move to ``after`` means: READY, STOPPING, STATUS, EXTEND."""
        if self._closed or not self._owner.speaks():
            return
        lines: list[str] = []
        if after is AppState.RUNNING:
            lines.append("READY=1")
        elif after in (AppState.DRAINING, AppState.STOPPING):
            if not self._stopping:
                self._stopping = True
                lines.append("STOPPING=1")
        elif after in (AppState.NEW, AppState.STARTING):
            return  # nothing to tell before READY (and lifecycle.run's handlers are not in yet)
        status = self._owner.status(after)
        self._last_status = status
        lines.append(f"STATUS={status}")
        if self._stopping and after not in _ENDED:  # the last word asks for no more time
            usec = extend_usec(self._owner.deadline(), now)
            if usec is not None:
                lines.append(f"EXTEND_TIMEOUT_USEC={usec}")
        self._send(lines)
        if not self._active or lines[0] == "STOPPING=1":
            # The first word, or the shutdown began: the thread (re)plans its sends.
            self._active = True
            self._inbox.put(True)

    def last_word(self, status: str) -> None:
        """Send ``STATUS=status`` from the calling thread, then nothing more.

        For an exit that ends the process without the app reaching its last
        state (a second signal, a missed deadline): systemd then shows why.
        """
        if self._closed or not self._active:
            return
        self._send([f"STATUS={status}"])
        self.close()

    def close(self) -> None:
        """Send nothing more; the thread ends (and closes the socket: no send races a close)."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(False)
        if self._thread.ident is None:  # never started
            self._sock.close()

    def _send(self, lines: list[str]) -> None:
        payload = "\n".join(lines).encode()
        try:
            self._sock.sendto(payload, socket.MSG_DONTWAIT, self.address)
        except OSError as error:
            if self._warned.acquire(blocking=False):
                full = error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
                _log.warning(
                    "systemd notification failed",
                    variable="NOTIFY_SOCKET",
                    socket=self.where,
                    error=f"{type(error).__name__}: {error.strerror or error}",
                    hint="later failures are not logged; the app runs and stops as usual. "
                    + (
                        "The receiver is not reading its socket (its queue is full)"
                        if full
                        else "Under systemd check the unit's Type=notify; elsewhere unset "
                        "NOTIFY_SOCKET"
                    ),
                )

    # -- the notifier's thread -------------------------------------------------

    def _main(self) -> None:
        try:
            while True:
                wake = self._step_guarded() if self._active else None
                timeout = None if wake is None else wait_timeout(wake - self._clock())
                try:
                    if not self._inbox.get(timeout=timeout):
                        return
                except queue.Empty:
                    continue
        finally:
            self._sock.close()

    def _step_guarded(self) -> float | None:
        now = self._clock()
        try:
            return self.step(now)
        except Exception:  # noqa: BLE001 - the thread must outlive a bug: the pings matter
            if self._bug_reported.acquire(blocking=False):
                _log.exception("the systemd notifier failed; this is a bug")
            return now + EXTEND_EVERY

    def step(self, now: float) -> float | None:
        """Send what is due at ``now`` (pings, extensions); when to step next (None: when woken).

        Called by the notifier's thread; a test calls it with a fake clock.
        """
        wake: float | None = None
        if self.watchdog is not None:
            if self._next_ping is None:
                self._probe()  # the first ping certifies this probe, one interval on
                self._next_ping = now + self.watchdog
            elif now >= self._next_ping:
                if self._answered:
                    self._send(["WATCHDOG=1"])
                self._probe()
                self._next_ping = max(self._next_ping + self.watchdog, now)
            wake = self._next_ping
        if self._stopping and not self._extend_over:
            if self._next_extend is None:
                self._next_extend = now + EXTEND_EVERY  # app_moved sent the first
            elif now >= self._next_extend:
                self._extend(now)
                self._next_extend = now + EXTEND_EVERY
            if not self._extend_over:
                wake = self._next_extend if wake is None else min(wake, self._next_extend)
        return wake

    def _probe(self) -> None:
        self._answered = False
        self._probe_out = True
        self._owner.probe()

    def _extend(self, now: float) -> None:
        usec = extend_usec(self._owner.deadline(), now)
        if usec is None:
            self._extend_over = True  # past the deadline: the watchdog ends the run
            return
        lines = [f"EXTEND_TIMEOUT_USEC={usec}"]
        status = self._owner.status(self._owner.state())
        if status != self._last_status:
            self._last_status = status
            lines.append(f"STATUS={status}")
        self._send(lines)


class _DriverOwner:
    """A runner (`_Driver`) as the notifier reads it."""

    def __init__(self, driver: _Driver) -> None:
        self._driver = driver

    def speaks(self) -> bool:
        driver = self._driver
        return driver._owns_process or driver in _SPEAKERS

    def deadline(self) -> float | None:
        run = self._driver._run
        return None if run is None else run.shutdown_deadline

    def state(self) -> AppState:
        sched = self._driver.scheduler
        return AppState.NEW if sched is None else sched.state

    def status(self, state: AppState) -> str:
        driver = self._driver
        sched, run, blueprint = driver.scheduler, driver._run, driver._blueprint
        reason = None if sched is None else sched.shutdown_reason
        why = f" ({reason})" if reason else ""
        if state is AppState.RUNNING:
            count = 0 if run is None else len(run.infos)
            return f"running ({count} component{'' if count == 1 else 's'})"
        if state is AppState.DRAINING:
            low, high = drain_bounds(driver.app.drain_delay)
            span = f"{low:g}s" if low == high else f"{low:g}s to {high:g}s"
            return f"draining {span}{why}"
        if state is AppState.STOPPING:
            names: list[str] = []
            if run is not None and blueprint is not None:
                infos = run.infos
                names = [n for n in reversed(blueprint.graph.order) if infos[n].state in _LIVE]
            if not names:
                return f"stopping{why}"
            shown = ", ".join(names[:STATUS_NAMES])
            more = len(names) - STATUS_NAMES
            return f"stopping: {shown}{f' and {more} more' if more > 0 else ''}{why}"
        if state in (AppState.STOPPED, AppState.FAILED):
            code = None if sched is None else sched.exit_code
            return f"{state.value}, exit code {int(code) if code is not None else '?'}"
        return str(state.value)

    def probe(self) -> None:
        self._driver._post(("tick",))

    def in_control(self) -> bool:
        return threading.get_ident() == self._driver._control_ident


_SPEAKERS: weakref.WeakSet[Any] = weakref.WeakSet()


def notify_for_process(runner: _Driver) -> None:
    """Let ``runner`` speak to systemd for the process though it installs no signal handlers.

    `lifecycle.run` speaks for the process by itself; a program that owns
    its signals and runs its app with ``signals=None`` (as ``lifecycle
    exec`` does) calls this before ``start()``.

    Example::

        runner = lifecycle.ThreadedRunner(app, signals=None)
        notify_for_process(runner)
        runner.start()
    """
    _SPEAKERS.add(runner)


def notifier_for(driver: _Driver, environ: Mapping[str, str] | None = None) -> Notifier:
    """The notifier of ``driver`` (called where it prepares its run), started; or `NO_NOTIFIER`.

    Only a runner that may speak for the process (`lifecycle.run`, or
    `notify_for_process`) with ``NOTIFY_SOCKET`` set gets one; it wraps the
    runner's clock (`SystemdNotifier.turning`) for the watchdog's liveness
    check. A bad value logs one WARNING naming the variable and the value.

    Example::

        # in _Driver._prepare, where the Watchdog is created:
        self._systemd = notifier_for(self)      # NO_NOTIFIER without NOTIFY_SOCKET
        ...
        self._systemd.app_moved(after, now)     # in _log_app
        self._systemd.close()                   # in _teardown
    """
    env = os.environ if environ is None else environ
    if "NOTIFY_SOCKET" not in env:
        return NO_NOTIFIER
    if not (driver._run_owns_process or driver in _SPEAKERS):
        return NO_NOTIFIER
    name = driver.app.name
    try:
        address = parse_notify_socket(env.get("NOTIFY_SOCKET"))
    except ValueError as error:
        _log.warning("systemd notification disabled", app=name, error=str(error))
        return NO_NOTIFIER
    if address is None:
        return NO_NOTIFIER
    try:
        interval = watchdog_interval(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"), os.getpid())
    except ValueError as error:
        _log.warning("systemd watchdog disabled", app=name, error=str(error))
        interval = None
    try:
        notifier = SystemdNotifier(name, address, owner=_DriverOwner(driver), watchdog=interval)
    except OSError as error:
        _log.warning(
            "systemd notification disabled",
            app=name,
            error=f"NOTIFY_SOCKET={env.get('NOTIFY_SOCKET')!r}: no socket to send from "
            f"({error.strerror or error})",
        )
        return NO_NOTIFIER
    driver.clock = notifier.turning(driver.clock)
    notifier.start()
    return notifier
