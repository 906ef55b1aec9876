"""Where a thread or a task is right now, as text for a log line.

Every "stuck" report of the runtime — a component abandoned at its timeout,
a forced exit, an event loop that missed the shutdown deadline, a task still
pending when a loop closes — says *where* the code is, so that the reader
can go to the line that blocks. These two functions are the only places
that read frames.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from types import FrameType
from typing import Any

__all__ = ["task_stack", "thread_stack"]


def thread_stack(ident: int | None) -> str | None:
    """The stack of the thread ``ident`` (most recent call last), or None if it is gone."""
    if ident is None:
        return None
    frame = sys._current_frames().get(ident)
    if frame is None:
        return None
    return "".join(traceback.format_stack(frame))


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
    lines = traceback.StackSummary.extract(iter(frames)).format()
    return f"Stack of task {task.get_name()!r} (most recent call last):\n" + "".join(lines)
