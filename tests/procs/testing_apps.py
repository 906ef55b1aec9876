"""Child programs for tests/test_testing.py, run by `lifecycle.testing.spawn`.

As ``tests.procs.testing_apps:ATTR`` under ``lifecycle run`` (from the
repository's root):

* ``app``: db <- api, both stop at once: SIGTERM gives exit 0.
* ``overrun``: ``cache``'s stop ignores its token past its stop_timeout of
  0.3 s: SIGTERM gives exit 3 (TIMEOUT).
* ``with_health``: ``app`` with a health endpoint on an ephemeral loopback
  port, for ``ready="readyz"``.

As a script (``python tests/procs/testing_apps.py SCENARIO``):

* ``serve``: ``lifecycle.run`` of ``app``, stdlib logging configured so the
  ``app started`` line is printed (to stderr).
* ``deaf``: ignores SIGTERM and SIGINT, prints ``app started`` and waits
  HOLD_BOUND seconds: the test must kill it.
* ``silent``: never prints ``app started``; waits HOLD_BOUND seconds.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import lifecycle
from lifecycle import App, CancelToken

HOLD_BOUND = 20.0
"""Seconds a stuck call or a deaf program holds at most (well past every test's bound)."""


def _shop(name: str, **options: object) -> App:
    made = App(name, shutdown_timeout=10, stop_timeout=2, **options)  # type: ignore[arg-type]

    @made.resource(name="db")
    def db() -> object:
        yield "connection"

    @made.worker(name="api", depends_on=["db"])
    def api(token: CancelToken) -> None:
        token.wait()

    return made


app = _shop("shop")
with_health = _shop("probed", health=("127.0.0.1", 0))


def _overrun() -> App:
    made = _shop("overrun")
    forever = threading.Event()

    class Cache:
        def stop(self) -> None:
            forever.wait(HOLD_BOUND)  # ignores its token

    made.add(Cache(), name="cache", stop_timeout=0.3)
    return made


overrun = _overrun()


def main(scenario: str) -> int:
    if scenario == "serve":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        return lifecycle.run(app)
    hold = threading.Event()
    if scenario == "deaf":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("app started (deaf: ignores SIGTERM)", flush=True)
    hold.wait(HOLD_BOUND)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
