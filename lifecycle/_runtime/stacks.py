"""Where a thread or a task is right now, as text for a log line.

Every "stuck" report of the runtime — a component abandoned at its timeout,
a forced exit, an event loop that missed the shutdown deadline, a task still
pending when a loop closes — says *where* the code is, so that the reader
can go to the line that blocks. These two functions are the only places
that read frames.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import runpy
import sys
import threading
import traceback
from types import FrameType, TracebackType
from typing import Any, Final

__all__ = ["task_stack", "thread_stack", "user_traceback"]

# The package's own folder: its frames above the user's code are left out.
_PACKAGE: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# The interpreter's machinery that runs a thread, a task or a program: left out
# above the user's code too.
_MACHINERY: Final = (
    os.path.abspath(threading.__file__),
    os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep,
    os.path.dirname(os.path.abspath(concurrent.futures.__file__)) + os.sep,
    os.path.abspath(runpy.__file__),
    os.path.abspath(contextlib.__file__),
)


def _ours(filename: str) -> bool:
    """A frame of lifecycle's or of the thread/task machinery (not the user's)."""
    path = os.path.abspath(filename)
    return path.startswith((_PACKAGE, *_MACHINERY))


def _from_user(frames: list[traceback.FrameSummary]) -> list[traceback.FrameSummary]:
    """The frames from the first of the user's on (all of them if none is)."""
    for i, frame in enumerate(frames):
        if not _ours(frame.filename):
            return frames[i:]
    return frames


def thread_stack(ident: int | None) -> str | None:
    """The stack of the thread ``ident`` (most recent call last), or None if it is gone."""
    if ident is None:
        return None
    frame = sys._current_frames().get(ident)
    if frame is None:
        return None
    frames = _from_user(list(traceback.extract_stack(frame)))
    return "".join(traceback.StackSummary.from_list(frames).format())


def task_stack(task: asyncio.Task[Any]) -> str | None:
    """Where a suspended task waits, following its chain of awaits; None if it has no frame.

    ``Task.print_stack()`` shows only the task's own coroutine frame; the
    user's code is usually several awaits further down.
    """
    frames: list[tuple[FrameType, int]] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    if not frames:
        return None
    lines = traceback.StackSummary.from_list(
        _from_user(list(traceback.StackSummary.extract(iter(frames))))
    ).format()
    return f"Stack of task {task.get_name()!r} (most recent call last):\n" + "".join(lines)


def user_traceback(error: BaseException) -> TracebackType | None:
    """``error``'s traceback from the first of the user's frames on.

    A component's exception passes through lifecycle's call machinery
    (the runner's thread, the component adapter) before the user's code; a
    log entry's traceback starts where the user's code does. If every frame
    is lifecycle's, the traceback is left whole.

    Example::

        _log.error("stop() raised", exc_info=(type(error), error, user_traceback(error)))
    """
    tb = error.__traceback__
    first = tb
    while first is not None and _ours(first.tb_frame.f_code.co_filename):
        first = first.tb_next
    return tb if first is None else first
