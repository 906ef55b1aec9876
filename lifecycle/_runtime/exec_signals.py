"""The signals ``lifecycle exec`` acts on; imports nothing but `signal`.

``python -m lifecycle exec`` blocks them from the moment the command begins,
before anything heavy is imported, until its handlers are in place: as PID 1 a
signal without a handler is dropped, and elsewhere one whose default action
ends the process would end lifecycle and leave its child running, orphaned.
"""

from __future__ import annotations

import signal
from typing import Final

__all__ = ["FORWARDED", "HANDLED", "STOPPING"]


def _present(*names: str) -> tuple[signal.Signals, ...]:
    return tuple(getattr(signal, name) for name in names if hasattr(signal, name))


def _realtime() -> tuple[int, ...]:
    low = getattr(signal, "SIGRTMIN", None)
    high = getattr(signal, "SIGRTMAX", None)
    if low is None or high is None:
        return ()
    return tuple(range(int(low), int(high) + 1))


_HALT: Final = _realtime()[3:4]  # SIGRTMIN+3, where there are real-time signals

STOPPING: Final[tuple[int, ...]] = (
    *_present("SIGTERM", "SIGINT", "SIGPWR"),
    *_HALT,
)
"""Signals that begin the stop: SIGTERM, SIGINT, and what inits are asked to shut down
with: SIGPWR (``lxc-stop``) and SIGRTMIN+3 (systemd's halt, the stop signal of
systemd-based container images)."""

FORWARDED: Final[tuple[int, ...]] = (
    *_present(
        "SIGHUP",
        "SIGQUIT",
        "SIGUSR1",
        "SIGUSR2",
        "SIGWINCH",
        "SIGTTIN",
        "SIGTTOU",
        "SIGALRM",
        "SIGVTALRM",
        "SIGPROF",
        "SIGXCPU",
        "SIGIO",
        "SIGSTKFLT",
    ),
    *(n for n in _realtime() if n not in _HALT),
)
"""Signals passed on to the child's PID as they arrive: the ones servers act on
(gunicorn: SIGHUP reload, SIGQUIT quick stop, SIGUSR1 reopen logs, SIGUSR2 upgrade,
SIGWINCH stop workers, SIGTTIN/SIGTTOU add and remove a worker) and every other
one whose default action would end lifecycle (timers, SIGXCPU, SIGIO, real-time)."""

HANDLED: Final = frozenset((*STOPPING, *FORWARDED))
"""Every signal ``lifecycle exec`` installs a handler for."""
