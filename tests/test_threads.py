"""Signal masks of lifecycle's threads: helpers block SIGTERM, user code keeps the program's.

The process tests run this module as a child (``python -m tests.test_threads MODE``):

* ``masks``: a ThreadedRunner app with an `HTTPServer` and the health
  endpoint. Once it runs, a thread of the child's own fires a token deadline
  whose ``on_cancel`` callback, an HTTP handler and a component's
  ``ready()`` (behind ``/readyz``) each report their own thread's mask and
  start a ``sleep`` process, which must die on ``terminate()``; then every
  thread's mask is reported (``/proc/self/task/<tid>/status``, ``SigBlk``).
* ``pending``: an embedded ThreadedRunner app with an `HTTPServer` and busy
  deadline timer, whose threads are all lifecycle's helpers. The main thread
  blocks SIGTERM and the parent sends one to the process: no thread may take
  it (it stays pending for the process, ``ShdPnd``) until the main thread
  unblocks it and its handler begins the shutdown.

Each child prints one JSON line on stdout at the end.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

import pytest

import lifecycle
from lifecycle import App
from lifecycle._runtime import runners
from lifecycle._runtime.signals import HELPER_BLOCKED, helper_thread, user_code_thread

BOUND = 10.0
"""Seconds any wait of these tests gets at most (the happy path takes milliseconds)."""
ASYNC = {signal.SIGTERM, signal.SIGINT}
"""The signals the process tests check in every mask."""


def _mask() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, ()))


def test_a_helper_started_by_a_helper_gives_user_code_the_programs_mask():
    """helper -> helper -> user-code thread: the user code gets the program's mask, not the block.

    The deadline timer or a callback thread may be started from a helper
    (the runner's control thread); the user code two levels down must still
    not inherit SIGTERM blocked.
    """
    program = _mask()
    seen: dict[str, set[int]] = {}

    def user_code() -> None:
        seen["user"] = _mask()

    def inner() -> None:
        seen["inner"] = _mask()
        t = threading.Thread(target=user_code_thread(user_code))
        t.start()
        t.join(BOUND)

    def outer() -> None:
        t = threading.Thread(target=helper_thread(inner))
        t.start()
        t.join(BOUND)

    t = threading.Thread(target=helper_thread(outer))
    t.start()
    t.join(BOUND)
    assert seen["inner"] >= HELPER_BLOCKED
    assert seen["user"] == program


def test_user_code_started_outside_any_helper_inherits_its_creators_mask():
    """user_code_thread from a plain thread: the creator's mask, whatever it blocks."""
    seen: dict[str, set[int]] = {}

    def creator() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        t = threading.Thread(target=user_code_thread(lambda: seen.update(user=_mask())))
        t.start()
        t.join(BOUND)
        seen["creator"] = _mask()

    t = threading.Thread(target=creator)
    t.start()
    t.join(BOUND)
    assert seen["user"] == seen["creator"]
    assert signal.SIGUSR2 in seen["user"]


# -- in a child process --------------------------------------------------------------


def _run_child(mode: str, *, sigterm_after: str | None = None) -> dict[str, Any]:
    """Run this module as a child in ``mode``; its JSON result (SIGTERM on ``sigterm_after``)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.test_threads", mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert child.stdout is not None
        result: dict[str, Any] | None = None
        for line in child.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if sigterm_after is not None and event.get("event") == sigterm_after:
                child.send_signal(signal.SIGTERM)
            if event.get("event") == "result":
                result = event
        code = child.wait(BOUND)
        stderr = child.stderr.read() if child.stderr is not None else ""
        assert result is not None, stderr
        result["code"] = code
        result["stderr"] = stderr
        return result
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(BOUND)
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def _is_helper(name: str) -> bool:
    """Whether a thread of the ``masks`` child is one of lifecycle's helpers (by its name)."""
    if name in ("lifecycle:threads", "lifecycle:threads.watchdog"):
        return True  # the runner's control thread, its watchdog
    if name in ("lifecycle-deferred", "lifecycle-deadlines"):
        return True
    if name.startswith("lifecycle:http") and name.endswith((" accept", " timeouts")):
        return True
    return name.startswith("lifecycle-health:") and not name.endswith(":ready")


def _blocked(mask: set[int]) -> set[int]:
    return mask & ASYNC


@pytest.mark.process
@pytest.mark.skipif(not HELPER_BLOCKED, reason="no pthread_sigmask on this platform")
def test_helper_threads_block_sigterm_and_user_code_and_its_processes_do_not():
    """In a running app: helpers block SIGTERM/SIGINT; callbacks, handlers, ready() do not.

    The ``sleep`` each user-code site starts dies on ``terminate()``.
    """
    result = _run_child("masks")
    assert result["code"] == 0, result["stderr"]
    for site in ("callback", "handler", "ready"):
        report = result[site]
        assert _blocked(set(report["thread"])) == set(), (site, report)
        assert _blocked(set(report["process"])) == set(), (site, report)
        assert report["terminated"] == -signal.SIGTERM, (site, report)
    threads: dict[str, list[int]] = result["threads"]
    helpers = {name: mask for name, mask in threads.items() if _is_helper(name)}
    expected = {"lifecycle:threads", "lifecycle-deferred", "lifecycle-deadlines"}
    assert expected <= set(helpers), threads
    assert any(name.endswith(" accept") for name in helpers), threads
    assert any(name.startswith("lifecycle-health:") for name in helpers), threads
    for name, mask in helpers.items():
        assert _blocked(set(mask)) == ASYNC, (name, threads)
    readiness = [name for name in threads if name.endswith(":ready")]
    assert readiness, threads
    for name in readiness:
        assert _blocked(set(threads[name])) == set(), (name, threads)
    assert _blocked(set(threads["MainThread"])) == set()


@pytest.mark.process
@pytest.mark.skipif(not HELPER_BLOCKED, reason="no pthread_sigmask on this platform")
def test_a_process_directed_sigterm_is_left_to_the_main_thread_by_busy_helpers():
    """Main thread blocking SIGTERM, busy helpers: the signal stays pending; main then takes it.

    Had any helper left SIGTERM unblocked, the kernel would have handed it
    the signal at once (nothing pending), and the handler would have run
    while the main thread still blocked it.
    """
    result = _run_child("pending", sigterm_after="blocked")
    assert result["pending"] is True, result
    assert result["handled_while_blocked"] is False, result
    assert result["unblocked"] == [], result
    assert result["code"] == 0, result["stderr"]
    assert result["reason"] == "signal SIGTERM", result


# -- the child ---------------------------------------------------------------------


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _status_field(path: str, field: str) -> int:
    with open(path) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    raise LookupError(f"{field} not in {path}")


def _signals(bits: int) -> list[int]:
    return [n for n in range(1, 65) if bits & (1 << (n - 1))]


def _thread_mask(native_id: int | None = None) -> list[int]:
    tid = threading.get_native_id() if native_id is None else native_id
    return _signals(_status_field(f"/proc/self/task/{tid}/status", "SigBlk"))


def _spawn_and_terminate() -> dict[str, Any]:
    """Start a ``sleep``, read its mask, terminate it: how it ended (killed if it survived)."""
    report: dict[str, Any] = {"thread": _thread_mask()}
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        report["process"] = _signals(_status_field(f"/proc/{sleeper.pid}/status", "SigBlk"))
        sleeper.terminate()
        try:
            report["terminated"] = sleeper.wait(2.0)
        except subprocess.TimeoutExpired:
            report["terminated"] = "survived terminate()"
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(BOUND)
    return report


def _child_masks() -> int:
    reports: dict[str, Any] = {}
    probe_ready = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            reports["handler"] = _spawn_and_terminate()
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Probe:
        def start(self) -> None:
            pass

        def stop(self) -> None:
            pass

        def ready(self) -> bool:
            if probe_ready.is_set() and "ready" not in reports:
                reports["ready"] = _spawn_and_terminate()
            return True

    app = App("threads", shutdown_timeout=5.0, health=("127.0.0.1", 0))
    http_server = app.add(lifecycle.HTTPServer(Handler, ("127.0.0.1", 0)), name="http")
    app.add(Probe(), name="probe")

    def drive() -> None:
        try:
            deadline = time.monotonic() + BOUND
            while not app.ready and time.monotonic() < deadline:
                time.sleep(0.01)
            fired = threading.Event()

            def callback() -> None:
                reports["callback"] = _spawn_and_terminate()
                fired.set()

            source = lifecycle.CancelSource(timeout=0.01)  # fired by the deadline timer
            source.token.on_cancel(callback)
            fired.wait(BOUND)
            host, port = http_server.address
            urllib.request.urlopen(f"http://{host}:{port}/", timeout=BOUND).read()
            probe_ready.set()
            health_port = app.health_address[1]  # type: ignore[index]
            urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=BOUND).read()
            threads = {
                t.name: _thread_mask(t.native_id)
                for t in threading.enumerate()
                if t.native_id is not None and os.path.exists(f"/proc/self/task/{t.native_id}")
            }
            _emit(event="result", threads=threads, **reports)
        finally:
            app.request_shutdown("the child is done")

    threading.Thread(target=drive, name="drive", daemon=True).start()
    code = lifecycle.run(app, runner="thread")
    return int(code)


def _child_pending() -> int:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # never called
            self.send_response(204)
            self.end_headers()

    app = App("threads", shutdown_timeout=5.0)
    app.add(lifecycle.HTTPServer(Hello, ("127.0.0.1", 0)), name="http", stop_timeout=2.0)
    stop = threading.Event()
    reasons: list[str] = []

    def keep_deadlines_busy() -> None:
        # The child's own thread, kept out of the kernel's choice: only
        # lifecycle's helpers and the main thread could take the signal.
        signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC)
        while not stop.is_set():
            sources = [lifecycle.CancelSource(timeout=0.001 * (i % 5)) for i in range(50)]
            sources[-1].token.wait(1.0)

    runners._CallThreads.IDLE = 0.05  # the start's call thread (user code) ends when idle
    runner = lifecycle.ThreadedRunner(app)
    runner.start()
    busy = threading.Thread(target=keep_deadlines_busy, name="busy", daemon=True)
    busy.start()
    deadline = time.monotonic() + BOUND
    own = {threading.get_native_id()}

    def unblocked() -> list[str]:
        names = {t.native_id: t.name for t in threading.enumerate()}
        found = []
        for tid in os.listdir("/proc/self/task"):
            if int(tid) in own:
                continue
            try:
                mask = _status_field(f"/proc/self/task/{tid}/status", "SigBlk")
            except (OSError, LookupError):
                continue  # ended meanwhile
            if not mask & (1 << (signal.SIGTERM - 1)):
                found.append(names.get(int(tid), tid))
        return found

    while unblocked() and time.monotonic() < deadline:
        time.sleep(0.01)
    remaining = unblocked()
    deadline = time.monotonic() + BOUND
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    app.shutdown_token.on_cancel(lambda: reasons.append("cancelled"))
    _emit(event="blocked")
    pending = False
    while time.monotonic() < deadline:
        if _status_field("/proc/self/status", "ShdPnd") & (1 << (signal.SIGTERM - 1)):
            pending = True
            break
        if app.shutdown_reason is not None:
            break  # a helper took the signal: the handler ran anyway
        time.sleep(0.001)
    handled_while_blocked = app.shutdown_reason is not None
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # delivered here, now
    code = runner.wait()
    stop.set()
    _emit(
        event="result",
        pending=pending,
        handled_while_blocked=handled_while_blocked,
        unblocked=remaining,
        reason=app.report().get("shutdown_reason"),
    )
    return int(code)


if __name__ == "__main__":
    sys.exit({"masks": _child_masks, "pending": _child_pending}[sys.argv[1]]())
