"""Example applications for tests/test_cli.py, named as ``tests.procs.cli_apps:ATTR``.

Each attribute is an `App` or a zero-argument factory returning one, as a
user's module would hold, plus a few things that are not (for the error
messages). Nothing runs at import: the apps run under ``lifecycle run``.

The running apps write nothing themselves: the parent synchronises on the
library's own ``app started`` log event.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Iterator

import lifecycle
from lifecycle import App, CancelToken

HOLD_BOUND = 20.0
"""Seconds a stuck stop holds at most (well past its timeout; the process then exits)."""


def _shop(name: str = "shop") -> App:
    """db <- cache <- api, worker -> db: two start waves after db."""
    app = App(name, drain_delay=0.0, shutdown_timeout=30, stop_timeout=5)

    @app.resource(name="db")
    def db() -> Iterator[str]:
        yield "connection"

    @app.resource(name="cache", depends_on=["db"], stop_timeout=2)
    def cache() -> Iterator[str]:
        yield "cache"

    @app.worker(name="api", depends_on=["cache", "db"])
    def api(token: CancelToken) -> None:
        token.wait()

    @app.worker(name="mailer", depends_on=["db"], stop_timeout=1)
    def mailer(token: CancelToken) -> None:
        token.wait()

    return app


app = _shop()
"""A valid app: ``db``, ``cache``, ``api``, ``mailer``; fits its budget (5 + 2 + 5 of 30)."""


def make_app() -> App:
    """A factory returning a valid app."""
    return _shop("made")


def async_app() -> App:
    """Only async components: ``--runner auto`` picks asyncio."""
    made = App("aio", shutdown_timeout=20, stop_timeout=5)

    @made.worker(name="ticker")
    async def ticker(token: CancelToken) -> None:
        await token.wait_async()
        assert isinstance(asyncio.get_running_loop(), asyncio.AbstractEventLoop)

    return made


def chatty() -> App:
    """A worker that logs through stdlib ``logging`` (its own logger) once it runs."""
    made = App("chatty", shutdown_timeout=20, stop_timeout=5)

    @made.worker(name="mailer")
    def mailer(token: CancelToken) -> None:
        logging.getLogger("shop.mailer").warning("mail queue empty")
        token.wait()

    return made


def failing() -> App:
    """A critical worker that raises once started: exit code 1."""
    made = App("failing", shutdown_timeout=20, stop_timeout=5)

    @made.worker(name="doomed")
    def doomed(token: CancelToken) -> None:
        raise RuntimeError("the doomed worker crashed on purpose")

    return made


def stuck() -> App:
    """A stop that ignores its token past its 0.5 s timeout: abandoned, exit code 3."""
    made = App("stuck", shutdown_timeout=10, stop_timeout=0.5)
    forever = threading.Event()

    class Stuck:
        def start(self) -> None:
            pass

        def stop(self) -> None:
            forever.wait(HOLD_BOUND)

    made.add(Stuck(), name="stuck")
    return made


def cycle() -> App:
    """a -> b -> c -> a: a configuration error."""
    made = App("loop")
    for name, dep in (("a", "b"), ("b", "c"), ("c", "a")):
        made.add(object(), name=name, depends_on=[dep], stop=lambda: None)
    return made


def unknown() -> App:
    """``api`` depends on ``dbb``, which is not registered (``db`` is)."""
    made = App("typo")
    made.add(object(), name="db", stop=lambda: None)
    made.add(object(), name="api", depends_on=["dbb"], stop=lambda: None)
    return made


def overrun() -> App:
    """drain 5 s + api 10 s + db 10 s = 25 s > shutdown_timeout 20 s: the budget overruns."""
    made = App("tight", drain_delay=5, shutdown_timeout=20, stop_timeout=10, health=0)
    db = made.add(object(), name="db", stop=lambda: None)
    made.add(object(), name="api", depends_on=[db], stop=lambda: None)
    return made


def unbounded() -> App:
    """No limits: ``math.inf`` stop and shutdown timeouts."""
    made = App("unbounded", shutdown_timeout=math.inf, stop_timeout=math.inf)
    made.add(object(), name="db", stop=lambda: None)
    return made


def odd_names() -> App:
    """Names that need quoting in Mermaid and DOT."""
    made = App('we"ird')
    made.add(object(), name='d"b', stop=lambda: None)
    made.add(object(), name="a\\pi", depends_on=['d"b'], stop=lambda: None)
    made.add(object(), name="x y", depends_on=["a\\pi", 'd"b'], stop=lambda: None)
    return made


def empty() -> App:
    """An app with no components."""
    return App("empty")


def duplicate() -> App:
    """A factory whose declaration itself fails: two components named ``db``."""
    made = App("dup")
    made.add(object(), name="db", stop=lambda: None)
    made.add(object(), name="db", stop=lambda: None)
    return made


def needs_arguments(dsn: str, pool_size: int = 4) -> App:
    """Not a zero-argument factory."""
    return App(dsn)


def returns_number() -> int:
    """A factory that returns something else than an App."""
    return 42


def raises() -> App:
    """A factory that raises."""
    raise RuntimeError("no configuration file found")


async def coroutine_factory() -> App:
    """An async factory (refused: the factory is called before any event loop)."""
    return App("never")


settings = {"port": 8080}
"""Not an App."""

App_class = lifecycle.App
"""A class, not an App."""
