"""The app each child of tests/procs/procgroup_parent.py runs (imported in the spawned child).

``make_app(behaviour, marker)`` returns an App with one component, ``work``,
that logs ``{"event": "child", "what": "start"|"stop"|"stopped", "pid": ...}``
as JSON lines on stdout (shared with the parent); the start line also holds
``pdeathsig``, the parent-death signal the kernel holds for the main thread. BEHAVIOUR:

* ``normal``: start and stop return at once;
* ``hang``: stop ignores the shutdown (waits up to 60 s): only SIGKILL ends it;
* ``block_start``: start does not return (for 60 s): the app never runs;
* ``crash_if_marked``: start raises once the file ``marker`` exists (the
  restarted children crash, so that the restart intensity is reached);
* ``first_boots_slowly``: the first child to create ``marker`` waits in its
  start until its token is cancelled; the others start at once and take
  ``SLOW_STOP`` seconds to stop (then log ``stopped``);
* ``stop_raises`` / ``stop_overruns``: the child's stop raises (its app
  exits FAILED, 1) / outlives the child app's stop_timeout (exit TIMEOUT, 3);
* ``optional_fails``: a second, non-critical component whose start raises;
* ``grandchild``: start runs a ``sleep`` command (logged as ``grandchild``
  with its ``gpid``); stop ignores the shutdown, as ``hang``;
* ``fork_helper``: start runs a *fork*-context helper process, which holds
  every descriptor the child inherited;
* ``unclosed_file``: start opens ``marker`` for writing, writes
  ``UNCLOSED_DATA`` and never closes nor flushes it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import subprocess
import threading

from lifecycle import App, CancelToken
from tests.procs import log_json_lines

FOREVER = threading.Event()  # never set: what a stop that ignores the shutdown waits on
SLOW_STOP = 1.6  # seconds: more than the 1.1 s an aborted start once gave running children
UNCLOSED_DATA = "x" * 1000 + "end\n"  # under io's 8 KiB buffer: nothing written before exit
_KEPT: list[object] = []  # what the children keep alive until they exit
_PR_GET_PDEATHSIG = 2


def parent_death_signal() -> int:
    """The signal the kernel sends this process when its parent dies (0: none)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    value = ctypes.c_int(0)
    libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
    return value.value


def make_app(behaviour: str, marker: str) -> App:
    log = log_json_lines()
    pdeathsig = parent_death_signal()  # per thread: read in the main thread, which set it
    slow = behaviour in ("hang", "grandchild")
    stop_timeout = 60 if slow else 0.3 if behaviour == "stop_overruns" else 5
    app = App("child", shutdown_timeout=60 if slow else 10, stop_timeout=stop_timeout)
    first = False
    if behaviour == "first_boots_slowly":
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            first = True
        except FileExistsError:
            pass

    class Work:
        def start(self, token: CancelToken) -> None:
            log.info("child", what="start", pid=os.getpid(), pdeathsig=pdeathsig)
            if behaviour == "crash_if_marked" and os.path.exists(marker):
                raise RuntimeError("crashing: the marker exists")
            if behaviour == "block_start":
                FOREVER.wait(60)
            if first:
                log.info("child", what="booting", pid=os.getpid())
                token.wait(60)
            if behaviour == "grandchild":
                helper = subprocess.Popen(["sleep", "60"])
                _KEPT.append(helper)
                log.info("child", what="grandchild", pid=os.getpid(), gpid=helper.pid)
            if behaviour == "fork_helper":  # it inherits every descriptor of the child
                forked = multiprocessing.get_context("fork").Process(
                    target=FOREVER.wait, args=(30,), daemon=True
                )
                forked.start()
                _KEPT.append(forked)
                log.info("child", what="helper", pid=os.getpid(), gpid=forked.pid)
            if behaviour == "unclosed_file":
                out = open(marker, "w")  # noqa: SIM115 - left open on purpose
                out.write(UNCLOSED_DATA)
                _KEPT.append(out)

        def stop(self, token: CancelToken) -> None:
            log.info("child", what="stop", pid=os.getpid())
            if slow:
                FOREVER.wait(60)
            if behaviour == "first_boots_slowly" and not first:
                FOREVER.wait(SLOW_STOP)  # a stop that needs this long
            if behaviour == "stop_raises":
                raise RuntimeError("flushing the results failed")
            if behaviour == "stop_overruns":
                FOREVER.wait(2.0)  # past the app's stop_timeout: abandoned
            log.info("child", what="stopped", pid=os.getpid())

    class Optional:
        def start(self, token: CancelToken) -> None:
            raise RuntimeError("the optional cache is unavailable")

    app.add(Work(), name="work")
    if behaviour == "optional_fails":
        app.add(Optional(), name="optional", critical=False)
    return app
