"""Apps for the k8s tests: ``lifecycle k8s tests.procs.k8s_apps:NAME``."""

from __future__ import annotations

from lifecycle import App


def _noop() -> None:
    """A stop hook that does nothing."""


def _shop(app: App) -> App:
    db = app.add(object(), name="db", stop=_noop)
    app.add(object(), name="api", depends_on=[db], stop=_noop)
    return app


drained = _shop(
    App("shop", drain_delay=10, stop_timeout=10, shutdown_timeout=40, health=("0.0.0.0", 8081))
)
"""Drain 10 s, stop path api -> db 20 s: budget 30 s."""

short_drain = _shop(App("short", drain_delay=2, stop_timeout=5, health=("0.0.0.0", 8081)))
"""Drain 2 s: a preStop tops the endpoint window up to 5 s."""

no_drain = _shop(App("nodrain", stop_timeout=5, health=("0.0.0.0", 9000)))
"""No drain delay: the preStop sleep does the whole job."""

overrun = _shop(
    App("overrun", drain_delay=5, stop_timeout=20, shutdown_timeout=30, health=("0.0.0.0", 8081))
)
"""Needs 5 + 40 s but shutdown_timeout is 30: the grace follows the 30."""

no_health = _shop(App("bare", drain_delay=5))
"""No health endpoint."""

loopback = _shop(App("local", drain_delay=10, stop_timeout=10, shutdown_timeout=40, health=8081))
"""health=8081 listens on 127.0.0.1: unreachable for the kubelet."""

tiny_drain = _shop(App("tiny", drain_delay=1, stop_timeout=5, health=("0.0.0.0", 8081)))
"""Drain 1 s: shorter than any readiness reaction."""


mid_drain = _shop(
    App("mid", drain_delay=5, stop_timeout=10, shutdown_timeout=40, health=("0.0.0.0", 8081))
)
"""Drain 5 s, budget 25 s."""


def make() -> App:
    """A factory: ``tests.procs.k8s_apps:make``."""
    return _shop(App("made", drain_delay=6, health=("0.0.0.0", 8081)))


__all__ = [
    "drained",
    "loopback",
    "make",
    "mid_drain",
    "no_drain",
    "no_health",
    "overrun",
    "short_drain",
    "tiny_drain",
]
