"""What every listening server shares: its identity, and how its listener ends."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import lifecycle
from lifecycle._serving.listening import (
    _SO_ATTACH_FILTER,
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


def _can_make_a_network_namespace() -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        return False
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _can_make_a_network_namespace(), reason="needs root, unshare, ip and /dev/net/tun"
)
def test_a_handshake_under_way_when_refusing_begins_completes_and_is_taken_in():
    """The filter drops SYNs only: a handshake whose SYN was answered before the refusal
    (its last ACK, with the request, arrives after it) completes, and is accepted with its
    request; a SYN sent after it gets no answer. Packets in a fixed order, through a tun
    device in a network namespace of the test's own."""
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.procs.halfopen"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"refused": True, "taken": ["GET / HTTP/1.1\r\nHost: x\r\n\r\n"], "late": None}


@linux_only
def test_a_socket_of_a_reuseport_group_is_not_filtered():
    """A SYN dropped on one socket of a SO_REUSEPORT group would not go to another."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert refuse_new_connections(listener) is False
        assert _connects(listener.getsockname()[1], 5)


def _filter_length(sock: socket.socket) -> int:
    """Instructions of the socket filter attached to ``sock`` (0: none)."""
    return len(sock.getsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, 1024))  # SO_GET_FILTER


@linux_only
@pytest.mark.parametrize("given", [False, True])
def test_the_stop_filters_the_server_s_own_socket_only(given, monkeypatch: pytest.MonkeyPatch):
    """While the stop takes in the queue: its own socket refuses new handshakes; a socket
    it was given, which others hold too, is left as it is (it refuses for them otherwise)."""
    seen: list[int] = []
    take_queued = lifecycle.HTTPServer._take_queued

    def watching(self, sock):
        seen.append(_filter_length(sock))
        return take_queued(self, sock)

    monkeypatch.setattr(lifecycle.HTTPServer, "_take_queued", watching)
    if given:
        listener = socket.create_server(("127.0.0.1", 0))
        kept = listener.dup()  # the other holder's descriptor
        server = lifecycle.HTTPServer(http.server.BaseHTTPRequestHandler, sock=listener)
    else:
        kept = None
        server = lifecycle.HTTPServer(http.server.BaseHTTPRequestHandler, ("127.0.0.1", 0))
    server.start(lifecycle.CancelSource().token)
    server.stop(lifecycle.CancelSource(timeout=5).token)
    if kept is not None:
        with kept:
            assert _filter_length(kept) == 0
    assert seen == ([0] if given else [4])


@linux_only
@pytest.mark.parametrize("kind", ["HTTPServer", "AsyncStreamServer"])
def test_a_filter_the_kernel_refuses_is_said_once_in_the_log_naming_the_server(
    kind, monkeypatch: pytest.MonkeyPatch, log_events
):
    """The kernel refusing the filter (a seccomp policy, an old kernel; here an option
    number it does not know) leaves the stop as it was, and says so, naming the server."""
    monkeypatch.setattr("lifecycle._serving.listening._SO_ATTACH_FILTER", 0x7FFF)
    if kind == "HTTPServer":
        server = lifecycle.HTTPServer(
            http.server.BaseHTTPRequestHandler, ("127.0.0.1", 0), name="web"
        )
        server.start(lifecycle.CancelSource().token)
        server.stop(lifecycle.CancelSource(timeout=5).token)
    else:

        async def handle(reader, writer):
            writer.close()

        async def main():
            server = lifecycle.AsyncStreamServer(handle, "127.0.0.1", 0, name="web")
            await server.start(lifecycle.CancelSource().token)
            await server.stop(lifecycle.CancelSource(timeout=5).token)

        asyncio.run(main())
    said = [e for e in log_events if e["event"].startswith("listener filter not attached")]
    assert len(said) == 1, log_events
    assert said[0]["component"] == "web"
    assert said[0]["log_level"] == "info"
    assert "reset" in said[0]["event"]
    assert said[0]["error"]
