"""A real redis-server for the tests and benchmarks: a child process on a free 127.0.0.1 port.

`RedisServer` starts ``redis-server`` with persistence off (``--save ""
--appendonly no``), bound to 127.0.0.1 only, on a port that was free a moment
before, and waits (bounded) until it answers ``PING``. `stop` ends it by its
PID: SIGTERM, then SIGKILL after a bound. `redis_server_or_skip` is what a
test module's fixture calls: it skips with the reason when the binary is
missing, and fails loudly when the binary is there but does not come up.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest

START_BOUND = 10.0
"""Seconds redis-server has to answer PING after it was started."""
STOP_BOUND = 5.0
"""Seconds it has to exit after SIGTERM before it is SIGKILLed."""
INSTALL_HINT = "redis-server is not on PATH (apt-get install -y redis-server)"


class RedisServerError(RuntimeError):
    """redis-server did not come up, or did not stop."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    """True when a RESP ``PING`` on 127.0.0.1:``port`` gets ``+PONG`` within a short bound."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server child process on 127.0.0.1; a context manager.

    Attributes:
        port: The port it listens on (after `start`).
        url: ``redis://127.0.0.1:<port>/0``.
    """

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.binary = found
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL a redis client connects to."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The PID of the server process."""
        if self._proc is None:
            raise RedisServerError("redis-server was not started; call start() first")
        return self._proc.pid

    def start(self) -> RedisServer:
        """Start the server and wait (bounded by `START_BOUND`) until it answers PING."""
        if self._proc is not None:
            raise RedisServerError("redis-server was already started; use a new RedisServer")
        self._dir = tempfile.TemporaryDirectory(prefix="lifecycle-redis-")
        for _attempt in range(3):  # the free port may be taken between the check and the bind
            self.port = free_port()
            log_path = Path(self._dir.name) / f"redis-{self.port}.log"
            self._log = log_path.open("wb")
            options = {
                "port": str(self.port),
                "bind": "127.0.0.1",
                "save": "",
                "appendonly": "no",
                "dir": self._dir.name,
                "protected-mode": "yes",
            }
            argv = [self.binary]
            for option, value in options.items():
                argv += [f"--{option}", value]
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            deadline = time.monotonic() + START_BOUND
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _ping(self.port):
                    return self
                time.sleep(0.01)
            tail = log_path.read_text(errors="replace")[-2000:]
            self._kill()
            if "Address already in use" not in tail:
                raise RedisServerError(
                    f"redis-server ({self.binary}) on port {self.port} did not answer PING "
                    f"within {START_BOUND} s; its log:\n{tail}"
                )
        raise RedisServerError("redis-server found no free port in 3 attempts")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_BOUND)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_BOUND)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """End the server by its PID (SIGTERM, SIGKILL after `STOP_BOUND`) and remove its dir."""
        self._kill()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start() if self._proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def redis_server_or_skip() -> Iterator[RedisServer]:
    """A started `RedisServer`; `pytest.skip` with the reason when the binary is missing."""
    try:
        server = RedisServer()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with server:
        yield server


def client(server: RedisServer, **kwargs: Any) -> Any:
    """A ``redis.Redis`` client for ``server`` that decodes replies to str."""
    import redis  # noqa: PLC0415 - only the tests that have a server need it

    return redis.Redis.from_url(server.url, decode_responses=True, **kwargs)
