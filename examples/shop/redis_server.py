"""A private redis-server for ``python -m examples.shop`` when ``REDIS_URL`` is not set.

`private_redis` starts ``redis-server`` on a free 127.0.0.1 port with
persistence off (``--save "" --appendonly no``) in a temporary folder,
waits (bounded) until it answers ``PING``, and on exit ends it by its PID:
SIGTERM, then SIGKILL after a bound.

Example::

    with private_redis() as url:
        os.environ["REDIS_URL"] = url
        ...
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

START_BOUND = 10.0
STOP_BOUND = 5.0


class RedisNotStartedError(RuntimeError):
    """redis-server is missing, or did not answer PING in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def end(proc: subprocess.Popen[bytes], bound: float = STOP_BOUND) -> int:
    """End ``proc`` by its PID: SIGTERM, SIGKILL after ``bound`` seconds; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(bound)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(bound)


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """Run a private redis-server for the ``with`` block; yield its ``redis://`` URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisNotStartedError(
            "REDIS_URL is not set and redis-server is not on PATH: "
            "set REDIS_URL=redis://host:6379/0, or install it (apt-get install redis-server)"
        )
    with tempfile.TemporaryDirectory(prefix="shop-redis-") as folder:
        for _attempt in range(3):  # the free port may be taken before redis binds it
            port = free_port()
            log_path = Path(folder) / "redis.log"
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(
                    [
                        binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        folder,
                        "--protected-mode",
                        "yes",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C in the terminal is ours to handle
                )
            try:
                deadline = time.monotonic() + START_BOUND
                while proc.poll() is None and time.monotonic() < deadline:
                    if _pong(port):
                        break
                    time.sleep(0.02)
                else:
                    tail = log_path.read_text(errors="replace")[-1500:]
                    if "Address already in use" in tail:
                        continue
                    raise RedisNotStartedError(
                        f"redis-server on 127.0.0.1:{port} did not answer PING within "
                        f"{START_BOUND:g}s; its log:\n{tail}"
                    )
                yield f"redis://127.0.0.1:{port}/0"
                return
            finally:
                end(proc)
        raise RedisNotStartedError("redis-server found no free port in 3 attempts")
