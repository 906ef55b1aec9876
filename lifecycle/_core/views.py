"""The small typed views of an app that the serving layer is given.

Servers and middleware need three facts of the app they serve — the token
cancelled when shutdown is requested, the deadline by which it must end, and
the app's name for logs — and the health endpoint needs its states and
report. They are typed against these protocols, not against the runtime's
`App`, so that serving depends on the core only (`App` satisfies both).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .scheduler import ComponentInfo
from .states import AppState
from .tokens import CancelToken

__all__ = ["AppView", "ShutdownView"]


class ShutdownView(Protocol):
    """What a server sees of the app's shutdown."""

    @property
    def name(self) -> str:
        """The app's name, for logs."""

    @property
    def shutdown_token(self) -> CancelToken:
        """Cancelled once shutdown is requested: servers begin draining.

        Readiness turns off synchronously at the request; the runner cancels
        this token a moment later, off the signal path, so that its callbacks
        never run inside a signal handler.
        """

    @property
    def shutdown_deadline(self) -> float | None:
        """``time.monotonic()`` value by which the shutdown must end; None before it."""


class AppView(ShutdownView, Protocol):
    """What the health endpoint sees of the app: its shutdown, states and report."""

    @property
    def state(self) -> AppState:
        """The app's state."""

    @property
    def ready(self) -> bool:
        """Whether the app should receive traffic (evaluates ``ready()`` probes)."""

    @property
    def shutdown_reason(self) -> str | None:
        """Why the shutdown was requested, or None."""

    @property
    def components(self) -> Mapping[str, ComponentInfo]:
        """Name -> live record of each component."""

    def report(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the app and its components."""
