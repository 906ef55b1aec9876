"""Child processes: what ``lifecycle exec`` and `ProcessGroup` both do to the processes they own.

* exit codes as a shell reports them (`exit_status`, `shell_code`): 128 + N
  for a death by signal N;
* the stop: the stop signal and SIGCONT to every child (`send_stop`), a
  wait bounded by the stop timeout and the token's deadline, but at least
  `STOP_FLOOR` (`stop_seconds`), SIGKILL to those still there and a last
  wait of `KILL_WAIT` for them (`wait_or_kill`);
* the process-wide settings a parent or a child makes on Linux: a child
  subreaper (`become_subreaper`), a parent-death signal
  (`set_parent_death_signal`);
* the calling thread's signal mask for a wait (`signals_blocked`).

A child is anything with ``send``, ``kill`` and ``wait_exit`` (`Child`):
exec's one command, or one slot of a process group.

Added in 0.2.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Final, Protocol

from .._core.threads import HELPER_BLOCKED
from .._core.tokens import CancelToken

__all__ = [
    "KILL_WAIT",
    "REFUSED_STOP_SIGNALS",
    "STOP_FLOOR",
    "Child",
    "become_subreaper",
    "check_stop_signal",
    "exit_status",
    "send_stop",
    "set_parent_death_signal",
    "shell_code",
    "signals_blocked",
    "stop_seconds",
    "wait_event",
    "wait_or_kill",
]

KILL_WAIT: Final = 5.0
"""Seconds to wait for a child to be reaped after SIGKILL (it cannot refuse; a
process in uninterruptible sleep can take a moment)."""
STOP_FLOOR: Final = 0.1
"""Seconds a child has at least after the stop signal, whatever the stop timeout (0
included): a Python child that exits at once on SIGTERM takes 20-60 ms to do so."""
REFUSED_STOP_SIGNALS: Final = frozenset(
    {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCONT}
)
"""Job-control signals, refused as the stop signal: they pause or resume a process but
do not make it exit, so the child would only ever be killed at the stop timeout."""

_PR_SET_PDEATHSIG: Final = 1
_PR_SET_CHILD_SUBREAPER: Final = 36


def exit_status(status: int) -> int:
    """A ``waitpid`` status as a shell reports it: the exit code, or 128 + the killing signal.

    >>> exit_status(3 << 8)
    3
    >>> exit_status(signal.SIGTERM)
    143
    """
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def shell_code(exitcode: int) -> int:
    """A `multiprocessing` exit code (-N for a death by signal N) as a shell reports it.

    >>> shell_code(-9)
    137
    >>> shell_code(1)
    1
    """
    return 128 - exitcode if exitcode < 0 else exitcode


def check_stop_signal(signum: int) -> signal.Signals:
    """The stop signal, checked: a job-control signal (`REFUSED_STOP_SIGNALS`) is refused.

    >>> check_stop_signal(15).name
    'SIGTERM'
    """
    checked = signal.Signals(signum)
    if checked in REFUSED_STOP_SIGNALS:
        raise ValueError(
            f"{checked.name} does not make a process exit (it pauses or resumes it): the "
            f"child would only be killed at the stop timeout; use TERM, INT, QUIT or KILL"
        )
    return checked


def _prctl(option: int, value: int) -> bool:
    """``prctl(option, value)`` through libc (Linux only); True if it succeeded."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux); True if it is.

    Best effort: False elsewhere, or when the call is refused. PID 1 reaps
    orphans anyway.
    """
    if os.getpid() == 1:
        return True
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_parent_death_signal(signum: int) -> bool:
    """Have the kernel send ``signum`` to this process when its parent dies (Linux); True if set.

    The kernel sends it when the parent *thread* that forked this process
    ends, not only the parent process: the parent must fork from a thread
    that lives as long as the child. The setting belongs to the calling
    thread (``PR_GET_PDEATHSIG`` reads it there only); the signal it brings
    is sent to the whole process. Best effort: False elsewhere.
    """
    return _prctl(_PR_SET_PDEATHSIG, int(signum))


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block `HELPER_BLOCKED` in the calling thread for the block; put its mask back after."""
    if not HELPER_BLOCKED:
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, HELPER_BLOCKED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def wait_event(event: threading.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True if it is set (any length, a year included)."""
    seconds = min(seconds, threading.TIMEOUT_MAX / 2)
    deadline = time.monotonic() + seconds
    while not event.wait(max(0.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            return False
    return True


def stop_seconds(seconds: float, token: CancelToken | None, floor: float = 0.0) -> float:
    """``seconds``, cut to the token's remaining time, but ``floor`` at least."""
    left = None if token is None else token.remaining()
    if left is not None:
        seconds = max(min(seconds, left), floor)
    return seconds


class Child(Protocol):
    """A child process as the stop sees it."""

    def send(self, signum: int) -> bool:
        """Send ``signum`` to the child if it still runs (never to a reaped PID); True if sent."""

    def kill(self) -> None:
        """SIGKILL the child (and what it owns)."""

    def wait_exit(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the child to be reaped; True once it is."""


def signal_child(pid: int | None, signum: int) -> bool:
    """Send ``signum`` to ``pid``; False if there is no PID or no such process any more.

    The caller holds the lock that guards the child's reaping, so that the PID
    cannot have been reused by another process in between.
    """
    if pid is None:
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def send_stop(children: Sequence[Child], stop_signal: int) -> None:
    """Send ``stop_signal`` to each child, then SIGCONT (a stopped child could not act on it)."""
    for child in children:
        child.send(stop_signal)
        if stop_signal != signal.SIGCONT:
            child.send(signal.SIGCONT)


def wait_or_kill(children: Sequence[Child], seconds: float) -> list[Child]:
    """Wait up to ``seconds`` for every child to exit; SIGKILL the others; the killed ones.

    After the SIGKILL each killed child gets `KILL_WAIT` to be reaped.
    """
    deadline = time.monotonic() + min(seconds, threading.TIMEOUT_MAX / 2)
    left = [c for c in children if not c.wait_exit(max(0.0, deadline - time.monotonic()))]
    for child in left:
        child.kill()
    kill_deadline = time.monotonic() + KILL_WAIT
    for child in left:
        child.wait_exit(max(0.0, kill_deadline - time.monotonic()))
    return left
