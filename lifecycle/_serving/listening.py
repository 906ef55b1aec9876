"""What every server that listens on ``host:port`` says about itself: name, address, state.

`AsyncStreamServer` and the uvicorn and aiohttp integrations share it, so that
their names (``KIND:HOST:PORT`` until one is given), their ``address`` before
start (a clear error) and their ``repr`` read the same.

Added in 0.2.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["Listening"]


class Listening:
    """A mixin: ``name``, ``address``, ``port`` and the state word of a listening server.

    The class sets `KIND` (the prefix of the default name); the instance sets
    ``host``, ``_name`` (the ``name`` argument or None), ``_requested_port``
    and ``_address`` (None until it listens).

    Example::

        class Server(Listening):
            KIND = "uvicorn"

            def __init__(self, host: str, port: int) -> None:
                self.host, self._requested_port = host, port
                self._name, self._address = None, None

        Server("127.0.0.1", 8000).name  # 'uvicorn:127.0.0.1:8000'
    """

    KIND: ClassVar[str] = "tcp"

    host: str
    _name: str | None
    _requested_port: int
    _address: tuple[str, int] | None

    @property
    def _lc_name(self) -> str | None:
        """The ``name`` argument, or None: `App.add` registers the server under it."""
        return self._name

    @property
    def name(self) -> str:
        """For logs: the ``name`` argument, or ``KIND:HOST:PORT``."""
        if self._name is not None:
            return self._name
        host, port = self._address or (self.host, self._requested_port)
        return f"{self.KIND}:{host}:{port}"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` it listens on (the real port when 0 was asked for).

        Raises:
            RuntimeError: the server has not started.
        """
        if self._address is None:
            raise RuntimeError(
                f"server {self.name!r} has no address before start(): add it to a "
                f"lifecycle.App and run it, or await server.start()"
            )
        return self._address

    @property
    def port(self) -> int:
        """The port it listens on (see `address`)."""
        return self.address[1]


def state_word(*, stopped: bool, stopping: bool, draining: bool, listening: bool) -> str:
    """The one word a server's ``repr`` shows for where it is in its life."""
    if stopped:
        return "stopped"
    if stopping:
        return "stopping"
    if draining:
        return "draining"
    return "serving" if listening else "not started"
