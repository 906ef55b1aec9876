"""The identity every listening server shares: default name, address before start, state."""

from __future__ import annotations

import pytest

from lifecycle._serving.listening import Listening, state_word


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
