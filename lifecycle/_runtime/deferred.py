"""``lifecycle-deferred``: one daemon thread for work a signal handler hands over, and for keeping.

* `defer`: run a job on that thread. Signal-safe: it only puts the job on a
  ``queue.SimpleQueue``, whose ``put`` is re-entrant (it may interrupt a
  ``get`` or ``put`` of the same queue). A signal handler runs between two
  bytecodes of the main thread, which may hold any lock — a token's, an
  ``Event``'s condition — so cancelling a token there can deadlock (the
  handler waits for a lock the code it interrupted holds); handing the cancel
  to this thread cannot.
* `keep`: hold objects for the life of the process. An abandoned coroutine
  that swallows every exception (``except BaseException: pass`` in a retry
  loop) can never be closed: closing it throws ``GeneratorExit`` in, it
  swallows that too and loops, and garbage collection or interpreter exit —
  which close what is dropped — spin forever. Kept here, it is never
  dropped: the thread's frame holds it, and the frame of a daemon thread is
  not finalized, not even at interpreter exit.

The thread is started by `start` (at ``App`` construction: never inside a
signal handler, since starting a thread takes locks) and again in a child
process after ``fork`` (the child inherits no threads).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable

from .._core.log import get_logger
from .._core.threads import helper_thread

__all__ = ["KEEP_BOUND", "defer", "keep", "start"]

_log = get_logger()

KEEP_BOUND = 1.0
"""Seconds `keep` waits for the thread to take the objects over."""


class _Keep:
    """A job of `keep`: objects to hold forever, and the event that says they are held."""

    __slots__ = ("done", "objects")

    def __init__(self, objects: tuple[object, ...]) -> None:
        self.objects = objects
        self.done = threading.Event()


_Job = Callable[[], object] | _Keep


class _State:
    inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
    thread: threading.Thread | None = None
    lock = threading.Lock()


def start() -> None:
    """Start the thread unless it runs. Not signal-safe (it may start a thread)."""
    thread = _State.thread
    if thread is not None and thread.is_alive():
        return
    with _State.lock:
        thread = _State.thread
        if thread is None or not thread.is_alive():
            inbox = _State.inbox
            # Its jobs cancel tokens in the background: the callbacks run on
            # the callback threads, which get the program's mask back.
            _State.thread = threading.Thread(
                target=helper_thread(lambda: _serve(inbox)), name="lifecycle-deferred", daemon=True
            )
            _State.thread.start()


def defer(job: Callable[[], object]) -> None:
    """Run ``job()`` on the ``lifecycle-deferred`` thread, soon. Signal-safe.

    A job that raises is logged; the thread carries on. Jobs run one at a
    time, in order: each must be short (cancelling a token in the
    background is).
    """
    _State.inbox.put(job)


def keep(objects: Iterable[object]) -> bool:
    """Hold ``objects`` until the process ends: they are never finalized.

    Returns True once the thread holds them (within `KEEP_BOUND`).
    """
    start()
    job = _Keep(tuple(objects))
    _State.inbox.put(job)
    return job.done.wait(KEEP_BOUND)


def _serve(inbox: queue.SimpleQueue[_Job]) -> None:
    # Invariant: ``kept`` is never released; this frame lives until the process ends.
    kept: list[object] = []
    while True:
        job = inbox.get()
        if isinstance(job, _Keep):
            kept.extend(job.objects)
            job.done.set()
            continue
        try:
            job()
        except BaseException:  # noqa: BLE001 - the thread outlives any job
            _log.exception("a deferred lifecycle job raised; the thread carries on")
        del job


def _after_fork_in_child() -> None:
    # The parent's thread does not exist here, and its queue's state is the
    # parent's: a fresh queue, and a thread again if the parent had one.
    had_thread = _State.thread is not None
    _State.inbox = queue.SimpleQueue()
    _State.lock = threading.Lock()
    _State.thread = None
    if had_thread:
        start()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
