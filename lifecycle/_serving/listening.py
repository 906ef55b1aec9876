"""What every server that listens on ``host:port`` says about itself, and how its listener ends.

`AsyncStreamServer` and the uvicorn and aiohttp integrations share `Listening`,
so that their names (``KIND:HOST:PORT`` until one is given), their
``address`` before start (a clear error) and their ``repr`` read the same.

Every server's stop takes in what the kernel queued on its listening socket,
then closes it. A connection the kernel completes between the last
``accept()`` and the close would be reset by the close, after its client
already sent a request; `refuse_new_connections` narrows that window to the
handshakes already under way when the stop began.

Added in 0.2.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct
import sys
from typing import ClassVar, Final

from .._core.log import get_logger

__all__ = ["Listening", "admit_new_connections", "refuse_new_connections"]

_log = get_logger()

# Linux's socket options for a classic BPF program on a socket (asm-generic/socket.h).
_SO_ATTACH_FILTER: Final = 26
_SO_DETACH_FILTER: Final = 27
# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k;}. A TCP socket's filter sees
# each segment from its TCP header on: byte 13 holds the flags.
_DROP_SYN: Final = b"".join(
    struct.pack("HBBI", code, jt, jf, k)
    for code, jt, jf, k in (
        (0x30, 0, 0, 13),  # BPF_LD | BPF_B | BPF_ABS: A = the flags byte
        (0x45, 0, 1, 0x02),  # BPF_JMP | BPF_JSET | BPF_K: SYN set? next : skip one
        (0x06, 0, 0, 0),  # BPF_RET | BPF_K: keep nothing (a new connection attempt)
        (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET | BPF_K: keep all (a handshake's last ACK, data)
    )
)


def refuse_new_connections(sock: socket.socket, name: str | None = None) -> bool:
    """Make the kernel drop new connection attempts to the listening ``sock``; True if it does.

    What the kernel already queued stays queued, to be accepted; a new
    client's SYN is dropped, so its handshake never completes on this
    socket: it retries after about a second, and meets the closed listener
    (connection refused, which a client or a load balancer handles) instead
    of a reset after its request was sent. A handshake already under way
    (its SYN answered) still completes and is queued: only segments with the
    SYN flag are dropped, its last ACK is not. For a socket the server made
    itself: a filter replaces any the socket had, and a socket others hold
    too (one the server was given) would refuse for them as well. Linux
    only (a socket filter); False, and nothing changes, elsewhere, if the
    kernel refuses the filter, or for a socket of a ``SO_REUSEPORT`` group
    (a SYN dropped here would not go to another socket of the group). When
    the kernel refuses the filter (a seccomp policy, a kernel without socket
    filters) one line at INFO says so, naming the server ``name``.

    Example::

        refuse_new_connections(listening, "web")   # then accept what is queued, then close
    """
    if sys.platform != "linux":
        return False
    program = ctypes.create_string_buffer(_DROP_SYN, len(_DROP_SYN))
    # struct sock_fprog {unsigned short len; struct sock_filter *filter;}, native layout.
    fprog = struct.pack("HP", len(_DROP_SYN) // 8, ctypes.addressof(program))
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
            return False
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as error:
        _log.info(
            "listener filter not attached: a client whose handshake completes between "
            "the last accept and the close may be reset",
            component=name,
            error=str(error),
            hint="allow setsockopt(SO_ATTACH_FILTER) to the process (seccomp)",
        )
        return False
    return True


def admit_new_connections(sock: socket.socket) -> None:
    """Undo `refuse_new_connections`: for a socket that outlives the server (one it was given).

    Example::

        admit_new_connections(given)   # systemd's socket serves the next process
    """
    if sys.platform == "linux":
        with contextlib.suppress(OSError):  # no filter attached
            sock.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)


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
