r"""gunicorn: `ThreadWorker`, a worker class that stops on lifecycle's stop sequence.

Run any WSGI app under gunicorn with::

    gunicorn --worker-class lifecycle.gunicorn.ThreadWorker \\
        --graceful-timeout 30 -e LIFECYCLE_DRAIN_DELAY=5 app:wsgi

Each worker process serves the app with `lifecycle.WSGIServer` on the
listening socket gunicorn hands it (one thread per connection, HTTP/1.1
keep-alive), inside a lifecycle `App` of its own, and on SIGTERM:

1. readiness turns off at once (`ready` is False; answer your ``/readyz``
   with it) and the drain delay begins: the worker keeps accepting and
   serving, and once the runner's thread has fired the shutdown token (a
   moment after the signal handler returns; never inside it) every response
   says ``Connection: close`` and its connection is closed after it, so no
   client's next request races a close;
2. then the worker closes its copy of the listening socket after taking in
   what the kernel had queued, closes idle connections, finishes the
   requests in flight, asks long-lived ones to end (`mark_long_lived`), and
   ``CUT_MARGIN`` before its budget, counted from the SIGTERM, cuts what is
   left, naming each request;
3. the budget is gunicorn's ``graceful_timeout`` less `STOP_MARGIN`, drain
   delay included, so the worker exits before the master's SIGKILL. The
   drain delay may take at most half of it (a longer one is shortened, with
   a warning).

SIGQUIT and SIGINT (gunicorn's quick shutdown) skip what is left of the drain
delay and stop at once; the requests in flight keep the whole budget from
the signal on. The worker notifies gunicorn's heartbeat from its own thread
the whole time, stopping included, so the arbiter's ``timeout`` never kills a
draining worker; it stops by itself when the master dies, after
``max_requests`` requests, and when gunicorn's ``--reload`` saw a file
change (which only sets the worker's ``alive`` to False; checked once a
second, the stop then skips the drain delay: the master keeps the listener
and boots the replacement once this worker is gone).

The drain delay: ``ThreadWorker.drain_delay`` (a subclass may set it), else
the ``LIFECYCLE_DRAIN_DELAY`` environment variable (gunicorn's ``-e`` sets it
for the workers), else 0.

What gunicorn's master still does: on SIGTERM it closes *its* copy of the
listening sockets first, then signals the workers. A TCP socket stays open
(and keeps accepting into its backlog) as long as a worker holds it, so this
costs nothing here; a Unix socket's path is unlinked at once, so new clients
are refused from the SIGTERM on. Hence TCP listeners only.

``wsgi.multiprocess`` in the environ is True when gunicorn runs more than
one worker (``--workers``, as configured: a count changed later with TTIN or
TTOU is not seen), as in gunicorn's own workers.

Settings that do not apply: ``--threads`` (a thread per connection, capped
by ``--worker-connections``), ``--keep-alive`` (idle connections are kept
`IDLE_TIMEOUT`, longer than proxies keep theirs, so the proxy closes first),
the access log and the ``pre_request``/``post_request`` hooks. lifecycle's
events go to gunicorn's error log (its file and level) unless logging was
configured otherwise (``--log-config``, or handlers set up by the app).

Added in 0.2.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from types import FrameType
from typing import Final

try:
    from gunicorn.workers.base import Worker as _GunicornWorker
except ImportError as error:  # pragma: no cover - the extra is not installed
    raise ImportError(
        f"lifecycle.gunicorn needs gunicorn ({error}); install it with "
        f"pip install 'lifecycle[gunicorn]'"
    ) from None

from ._core.log import get_logger
from ._core.threads import helper_thread
from ._core.tokens import CancelSource, CancelToken
from ._runtime.app import App
from ._runtime.runners import ThreadedRunner
from ._serving.http import IDLE_TIMEOUT
from ._serving.wsgi import WSGIServer

__all__ = ["DRAIN_DELAY_ENV", "STOP_MARGIN", "ThreadWorker", "ready"]

_log = get_logger()

DRAIN_DELAY_ENV: Final = "LIFECYCLE_DRAIN_DELAY"
"""Environment variable holding the workers' drain delay in seconds."""
STOP_MARGIN: Final = 1.0
"""Seconds of ``graceful_timeout`` kept back: the master polls its workers every
0.1 s and SIGKILLs what remains at the timeout; the worker must be gone by then.
A worker takes 0.2-0.3 s from the cut to its exit (measured on 2 cores)."""

_GATE_SLACK: Final = 0.25  # the drain gate's stop_timeout past the drain delay

# The worker of this process, once it runs (a worker process runs one).
_worker: ThreadWorker | None = None


def ready() -> bool:
    """Whether this gunicorn worker serves: False from its SIGTERM (or SIGQUIT) on.

    Answer your readiness path with it, so that a probe that lands on a
    draining worker sees 503. Outside a `ThreadWorker` (plain gunicorn, a
    test) it is True.

    Example::

        def readyz(request):
            return Response(status=200 if lifecycle.gunicorn.ready() else 503)
    """
    worker = _worker
    return True if worker is None else worker.lifecycle_app.ready


def _check_tcp(sock: socket.socket) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(
            f"lifecycle.gunicorn.ThreadWorker serves TCP listeners only, got {sock!r}: "
            f"gunicorn unlinks a Unix socket's path the moment its master gets SIGTERM, "
            f"which refuses every client during the drain; bind HOST:PORT instead"
        )


class _WorkerServer(WSGIServer):
    """`WSGIServer` whose stop ends by the worker's budget, counted from the stop request.

    Its stop_timeout in the App covers drain and budget together (so that the
    plan fits); the stop itself is bounded to ``budget`` after the request,
    whether the drain was waited for (SIGTERM) or skipped (SIGQUIT).
    """

    lc_app: App | None = None
    lc_budget: float = 0.0

    def stop(self, token: CancelToken | None = None) -> None:
        app = self.lc_app
        deadline = None if app is None else app.shutdown_deadline
        if token is None or app is None or deadline is None:
            super().stop(token)
            return
        bounded = CancelSource(token, deadline=deadline - app.shutdown_timeout + self.lc_budget)
        try:
            super().stop(bounded.token)
        finally:
            bounded.close()


class _DrainGate:
    """The first component to stop: holds the stop for the drain delay (SIGQUIT ends it)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.skip = threading.Event()

    def stop(self, token: CancelToken) -> None:
        if self.delay <= 0 or self.skip.is_set():
            return
        _log.info("draining", component="drain", seconds=self.delay)
        left = token.remaining()
        self.skip.wait(self.delay if left is None else min(self.delay, left))


def _drain_delay(configured: float | None) -> float:
    if configured is not None:
        return float(configured)
    text = os.environ.get(DRAIN_DELAY_ENV, "").strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(
            f"{DRAIN_DELAY_ENV}={text!r} is not a number of seconds >= 0; "
            f"e.g. gunicorn -e {DRAIN_DELAY_ENV}=5 ..."
        )
    return value


class ThreadWorker(_GunicornWorker):  # type: ignore[misc] # gunicorn ships no types
    """A gunicorn worker class serving the WSGI app on lifecycle's stop sequence.

    See this module's docstring for what happens on SIGTERM. Use it by its
    dotted name; set the drain delay with ``-e LIFECYCLE_DRAIN_DELAY=S`` or
    in a subclass.

    Attributes:
        drain_delay: seconds between SIGTERM and closing the listener, during
            which the worker serves with ``Connection: close``; None reads
            ``LIFECYCLE_DRAIN_DELAY`` (default 0).
        lifecycle_app: the worker's `App` (set in the worker process).

    Example::

        # gunicorn --worker-class lifecycle.gunicorn.ThreadWorker app:wsgi
        class Worker(lifecycle.gunicorn.ThreadWorker):
            drain_delay = 5      # gunicorn --worker-class myapp.Worker app:wsgi

    Added in 0.2.
    """

    drain_delay: float | None = None

    def init_process(self) -> None:
        """In the worker process: build its App, then let gunicorn load the app and run."""
        global _worker
        drain = _drain_delay(self.drain_delay)
        budget = max(float(self.cfg.graceful_timeout) - STOP_MARGIN, 0.1)
        # Invariant: the stop keeps at least half the budget after the drain.
        longest = max(budget / 2 - _GATE_SLACK, 0.0)
        if drain > longest:
            _log.warning(
                "drain delay shortened: it may take at most half of graceful_timeout",
                drain_delay=drain,
                shortened_to=round(longest, 3),
                graceful_timeout=self.cfg.graceful_timeout,
                hint="raise --graceful-timeout to twice the drain delay or more",
            )
            drain = longest
        self._lc_budget = budget
        self._lc_gate = _DrainGate(drain)
        self._lc_done = threading.Event()
        self._lc_signalled = False  # a stop signal reached the worker
        gate_timeout = drain + _GATE_SLACK if drain > 0 else 0.0
        # The servers' stops end by the budget after the request (`_WorkerServer`);
        # the global bound also covers the gate's slack, so that the plan fits.
        self.lifecycle_app = App(
            f"gunicorn-worker-{os.getpid()}",
            shutdown_timeout=budget + gate_timeout,
            stop_timeout=budget,
        )
        for listener in self.sockets:
            _check_tcp(getattr(listener, "sock", listener))  # a boot error: the master halts
        self._lc_log_to_gunicorn()
        _worker = self
        super().init_process()

    def _lc_log_to_gunicorn(self) -> None:
        """Send lifecycle's events to gunicorn's error log, unless logging was configured.

        Only when neither the ``lifecycle`` logger nor the root logger has a
        handler (no ``--log-config``, no ``logging`` set up by the app):
        gunicorn's error log (``--error-logfile``, ``--log-level``) is then
        the one place a gunicorn user looks.
        """
        ours = logging.getLogger("lifecycle")
        error_log = getattr(self.log, "error_log", None)
        if ours.handlers or logging.getLogger().handlers or error_log is None:
            return
        for handler in error_log.handlers:
            ours.addHandler(handler)
        ours.setLevel(error_log.level)
        ours.propagate = False

    def init_signals(self) -> None:
        """Gunicorn's worker signals, with SIGTERM/SIGQUIT/SIGINT driving the App's stop."""
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self.handle_exit)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(signal.SIGINT, self.handle_quit)
        signal.signal(signal.SIGWINCH, self.handle_winch)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.signal(signal.SIGABRT, self.handle_abort)
        # Requests in flight must not see EINTR from the stop signal.
        signal.siginterrupt(signal.SIGTERM, False)
        signal.siginterrupt(signal.SIGUSR1, False)

    # Both handlers run in the main thread between two bytecodes: they set
    # flags, set an Event no code of the main thread ever waits on, and make
    # the signal-safe shutdown request.
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM: drain, then stop."""
        self._lc_signalled = True
        self.alive = False
        self.lifecycle_app.request_shutdown("signal SIGTERM")

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        """SIGQUIT/SIGINT: stop without (the rest of) the drain delay."""
        self._lc_signalled = True
        self.alive = False
        self._lc_gate.skip.set()
        self.lifecycle_app.request_shutdown(f"signal {signal.Signals(sig).name}")
        self.cfg.worker_int(self)

    def run(self) -> None:
        """Serve every listener until the stop; exit 1 if the stop cut or failed."""
        app = self.lifecycle_app
        gate = self._lc_gate
        # The plan: drain gate, then the servers, within the budget together.
        gate_timeout = gate.delay + _GATE_SLACK if gate.delay > 0 else 0.0
        servers: list[str] = []
        self._lc_servers: list[WSGIServer] = []
        for listener in self.sockets:
            # The worker's copy of the master's socket: the stop closes it, and
            # the socket stays open while the master or another worker holds it.
            server = _WorkerServer(
                self.wsgi,
                sock=getattr(listener, "sock", listener),
                max_connections=self.cfg.worker_connections,
                idle_timeout=IDLE_TIMEOUT,
                multiprocess=self.cfg.workers > 1,
            )
            server.lc_app, server.lc_budget = app, self._lc_budget
            name = f"wsgi:{server.port}"
            app.add(server, name=name, stop_timeout=self._lc_budget)
            servers.append(name)
            self._lc_servers.append(server)
        if gate.delay > 0:
            app.add(gate, name="drain", depends_on=servers, stop_timeout=gate_timeout)
        beat = threading.Thread(
            target=helper_thread(self._heartbeat), name="lifecycle:heartbeat", daemon=True
        )
        beat.start()
        runner = ThreadedRunner(app, signals=None)
        try:
            runner.start()
            code = runner.wait()
        finally:
            self._lc_done.set()
        if code:
            raise SystemExit(1)  # not 3 or 4: the arbiter halts on those

    def _heartbeat(self) -> None:
        """Notify the arbiter until the process ends; stop when told to by another way.

        That is: on the master's death, at max_requests, or once ``alive``
        was turned False by another thread (gunicorn's reloader).
        """
        app = self.lifecycle_app
        interval = max(min(float(self.timeout) / 2, 1.0), 0.05) if self.timeout else 1.0
        asked = False  # whether this thread requested the stop (once is enough)
        while True:
            self.notify()
            if self._lc_done.wait(interval) or asked:
                if self._lc_done.is_set():
                    return
                continue
            if not self.alive and not self._lc_signalled:
                asked = True
                _log.info("gunicorn asked the worker to stop (reload); stopping", pid=os.getpid())
                self._lc_gate.skip.set()
                app.request_shutdown("gunicorn reload")
            elif self.ppid != os.getppid():
                asked = True
                _log.warning("gunicorn master died; stopping", pid=os.getpid())
                app.request_shutdown("gunicorn master died")
            elif sum(server.tracker.total for server in self._lc_servers) >= self.max_requests:
                asked = True
                _log.info("max_requests reached; stopping", max_requests=self.max_requests)
                app.request_shutdown("max_requests reached")
