"""What every listening server shares: its identity, and how its listener ends."""

from __future__ import annotations

import http.server
import socket
import sys

import pytest

import lifecycle
from lifecycle._serving.listening import (
    Listening,
    admit_new_connections,
    refuse_new_connections,
    state_word,
)


class Server(Listening):
    KIND = "demo"

    def __init__(self, host, port, name=None):
        self.host, self._requested_port = host, port
        self._name, self._address = name, None


def test_the_default_name_is_kind_host_port_and_follows_the_bound_port():
    server = Server("127.0.0.1", 0)
    assert server.name == "demo:127.0.0.1:0"
    server._address = ("127.0.0.1", 40123)
    assert server.name == "demo:127.0.0.1:40123"
    assert server.port == 40123


def test_a_given_name_wins():
    assert Server("127.0.0.1", 0, name="api").name == "api"


def test_the_address_before_start_is_an_error_that_says_what_to_do():
    with pytest.raises(RuntimeError, match=r"'demo:127.0.0.1:8000' has no address before start"):
        _ = Server("127.0.0.1", 8000).address


@pytest.mark.parametrize(
    ("flags", "word"),
    [
        ({"stopped": True, "stopping": True, "draining": True, "listening": True}, "stopped"),
        ({"stopped": False, "stopping": True, "draining": True, "listening": True}, "stopping"),
        ({"stopped": False, "stopping": False, "draining": True, "listening": True}, "draining"),
        ({"stopped": False, "stopping": False, "draining": False, "listening": True}, "serving"),
        (
            {"stopped": False, "stopping": False, "draining": False, "listening": False},
            "not started",
        ),
    ],
)
def test_the_state_word_names_the_latest_phase(flags, word):
    assert state_word(**flags) == word


# -- refusing new handshakes before the listener closes ---------------------------------

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the socket filter is Linux's")
SILENT = 0.3  # how long a refused handshake is watched not completing (a bound, not a sync)


def _connects(port: int, timeout: float) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
    except TimeoutError:
        return False
    return True


@linux_only
def test_refused_handshakes_do_not_complete_while_the_queued_ones_are_served():
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listener:
        port = listener.getsockname()[1]
        queued = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert refuse_new_connections(listener) is True
        assert not _connects(port, SILENT)  # its SYN is dropped: no handshake completes
        conn, _ = listener.accept()  # what was queued before is still there
        with conn, queued:
            queued.sendall(b"ping")
            assert conn.recv(4) == b"ping"
        admit_new_connections(listener)
        assert _connects(port, 5)
        admit_new_connections(listener)  # none attached: nothing happens


@linux_only
def test_after_the_close_a_refused_client_meets_a_refusal():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    refuse_new_connections(listener)
    listener.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


@linux_only
def test_a_given_socket_that_lives_on_elsewhere_admits_again_after_the_stop():
    """Under socket activation systemd keeps the listening socket for the next process."""
    listener = socket.create_server(("127.0.0.1", 0))
    kept = listener.dup()  # systemd's descriptor
    port = listener.getsockname()[1]
    server = lifecycle.HTTPServer(http.server.BaseHTTPRequestHandler, sock=listener)
    server.start(lifecycle.CancelSource().token)
    server.stop(lifecycle.CancelSource(timeout=5).token)
    with kept:
        assert _connects(port, 5)  # queued on the socket systemd still holds
        kept.accept()[0].close()


def test_off_linux_nothing_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert refuse_new_connections(listener) is False
        assert _connects(listener.getsockname()[1], 5)
