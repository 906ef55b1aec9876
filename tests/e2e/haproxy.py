"""A real haproxy in front of the replicas of an end-to-end test.

`HAProxy` writes a configuration into a private directory, runs haproxy in the
foreground (``-db``) as a child process and drives it through the runtime API
on its admin socket. The backend ``be`` has *slots* ``s1..sN``: servers that
start in maintenance with a placeholder address, to which the roll binds
replicas at runtime (``set server be/sX addr ... port ...`` then
``state ready``), exactly like an endpoints controller adds and removes pods.

Choices that the measurements depend on:

* ``retries 0`` and ``no option redispatch``: a refused or reset connection to
  a replica reaches the client as a 503/502 instead of being hidden: a load
  balancer's retries hide only requests it may resend, so a server must not
  rely on them.
* ``inter 500ms fall 1 rise 1``: one failed ``GET /readyz`` takes a replica out
  and one good one puts it back, so the LB notices a readiness change within
  one check interval (~0.5 s). A server's drain delay must outlast that
  (check interval x fall count + margin); ``fall 1`` keeps the LB's own
  hysteresis out of the numbers.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

BACKEND = "be"
"""Name of the haproxy backend holding the slots."""

SlotState = Literal["ready", "drain", "maint"]


class HAProxyNotInstalledError(RuntimeError):
    """The ``haproxy`` binary is not on PATH; end-to-end tests skip with this message."""


class HAProxyError(RuntimeError):
    """haproxy failed to start, or its runtime API refused a command."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_haproxy() -> str:
    """Return the path of the haproxy binary, or raise `HAProxyNotInstalledError`."""
    path = shutil.which("haproxy")
    if path is None:
        raise HAProxyNotInstalledError(
            "haproxy is not installed (not on PATH); install it with "
            "'apt-get install -y haproxy' to run the end-to-end tests"
        )
    return path


def _config(port: int, admin_socket: Path, slots: int, inter_ms: int) -> str:
    servers = "\n".join(
        # Placeholder address: port 9 (discard) on loopback has no listener; the
        # slot stays in maintenance until a replica is bound to it.
        f"    server s{i} 127.0.0.1:9 check disabled"
        for i in range(1, slots + 1)
    )
    return f"""\
global
    stats socket {admin_socket} mode 600 level admin
    maxconn 4096

defaults
    mode http
    retries 0
    no option redispatch
    option http-keep-alive
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s

frontend fe
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {inter_ms}ms fall 1 rise 1
{servers}
"""


class HAProxy:
    """A haproxy child process with ``slots`` runtime-bindable backend servers.

    Use as a context manager; the process is stopped by PID on exit.
    """

    def __init__(
        self,
        slots: int = 4,
        *,
        workdir: Path | None = None,
        check_inter_ms: int = 500,
        start_timeout: float = 5.0,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.binary = find_haproxy()
        self.slots = slots
        self.check_inter_ms = check_inter_ms
        self.start_timeout = start_timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lifecycle-haproxy-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.config_path = workdir / "haproxy.cfg"
        self.socket_path = workdir / "admin.sock"
        self.log_path = workdir / "haproxy.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def slot_names(self) -> list[str]:
        """Names of all slots, ``s1..sN``."""
        return [f"s{i}" for i in range(1, self.slots + 1)]

    # -- process ---------------------------------------------------------------

    def start(self) -> None:
        """Write the config, start haproxy and wait (bounded) for its admin socket."""
        if self._proc is not None:
            raise HAProxyError("haproxy is already running; stop() it before starting again")
        self.port = free_port()
        self.config_path.write_text(
            _config(self.port, self.socket_path, self.slots, self.check_inter_ms)
        )
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self.config_path)],
            capture_output=True,
            timeout=10,
            check=False,
        )
        if check.returncode != 0:
            raise HAProxyError(
                f"haproxy rejected {self.config_path}:\n{check.stdout.decode()}"
                f"{check.stderr.decode()}"
            )
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                self.stop()
                raise HAProxyError(f"haproxy exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                self.command("show info")
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise HAProxyError(
                    f"haproxy's admin socket did not answer within {self.start_timeout} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop haproxy by PID (SIGTERM, then SIGKILL after ``timeout``); return its exit code."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def close(self) -> None:
        """Stop haproxy and remove the private directory (if we created it)."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> HAProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines haproxy wrote to stdout/stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no haproxy log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- runtime API -----------------------------------------------------------

    def command(self, line: str, timeout: float = 2.0) -> str:
        """Send one runtime-API command to the admin socket and return haproxy's answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            chunks: list[bytes] = []
            # Non-interactive mode: haproxy answers one command, then closes.
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _check_slot(self, slot: str) -> None:
        if slot not in self.slot_names:
            raise ValueError(f"no slot {slot!r}; slots are {', '.join(self.slot_names)}")

    def set_addr(self, slot: str, port: int, host: str = "127.0.0.1") -> None:
        """Point ``slot`` at ``host:port`` (its health checks follow the new port)."""
        self._check_slot(slot)
        answer = self.command(f"set server {BACKEND}/{slot} addr {host} port {port}")
        if "changed" not in answer and "no need to change" not in answer:
            raise HAProxyError(f"set server {BACKEND}/{slot} addr failed: {answer.strip()}")

    def set_state(self, slot: str, state: SlotState) -> None:
        """Set the administrative state of ``slot`` (``ready``, ``drain`` or ``maint``)."""
        self._check_slot(slot)
        self._expect_empty(f"set server {BACKEND}/{slot} state {state}")

    def enable_health(self, slot: str) -> None:
        """Enable the health checks of ``slot``."""
        self._check_slot(slot)
        self._expect_empty(f"enable health {BACKEND}/{slot}")

    def _expect_empty(self, line: str) -> None:
        answer = self.command(line).strip()
        if answer:
            raise HAProxyError(f"haproxy refused {line!r}: {answer}")

    def set_health(self, slot: str, health: Literal["up", "stopping", "down"]) -> None:
        """Force the operational (health-check) state of ``slot`` until its next check."""
        self._check_slot(slot)
        self._expect_empty(f"set server {BACKEND}/{slot} health {health}")

    def bind(self, slot: str, port: int) -> None:
        """Bind a replica listening on 127.0.0.1:``port`` to ``slot``; it turns UP on a good check.

        haproxy 2.6 reports a server UP the moment it leaves forced maintenance
        ("UP/READY (leaving forced maintenance)"), before any health check of its
        new address. So the slot goes maint -> drain (checks run, no traffic),
        its health is forced down, and only then is it made ready: from here on
        UP means that haproxy's own ``GET /readyz`` of the new address passed.
        Wait for that with `wait_up`.
        """
        if not 0 < port < 65536:
            # haproxy takes the port modulo 65536 without complaint.
            raise ValueError(f"port must be in 1..65535, got {port}")
        self.set_addr(slot, port)
        self.enable_health(slot)
        self.set_state(slot, "drain")
        self.set_health(slot, "down")
        self.set_state(slot, "ready")

    def stats(self) -> dict[str, dict[str, str]]:
        """Return ``show stat`` rows of the backend's servers, keyed by slot name."""
        answer = self.command("show stat")
        lines = answer.splitlines()
        if not lines or not lines[0].startswith("# "):
            raise HAProxyError(f"unexpected 'show stat' answer: {answer[:200]!r}")
        lines[0] = lines[0][2:]
        rows = csv.DictReader(line for line in lines if line)
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] in self.slot_names
        }

    def status(self, slot: str) -> str:
        """Return the status haproxy reports for ``slot``: ``UP``, ``DOWN``, ``MAINT``, ...

        A transition in progress reads like ``DOWN 1/2``; only its first word is returned.
        """
        self._check_slot(slot)
        return self.stats()[slot]["status"].split(" ")[0]

    def wait_status(self, slot: str, want: str = "UP", timeout: float = 10.0) -> float:
        """Poll (bounded) until ``slot`` has status ``want``; return the seconds it took.

        For ``want="UP"`` the last health check must also have passed (``L7OK``):
        see `bind` for why haproxy's UP alone proves nothing about a new address.
        """
        self._check_slot(slot)
        start = time.monotonic()
        deadline = start + timeout
        while True:
            row = self.stats()[slot]
            status = row["status"].split(" ")[0]
            if status == want and (want != "UP" or row["check_status"].startswith("L7OK")):
                return time.monotonic() - start
            if self._proc is None or self._proc.poll() is not None:
                raise HAProxyError(f"haproxy is not running:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise HAProxyError(
                    f"slot {BACKEND}/{slot} is {row['status']} after {timeout} s, "
                    f"waiting for {want} (last check: {row['check_status']} "
                    f"{row['check_code']} {row['last_chk']})"
                )
            time.sleep(0.02)

    def wait_up(self, slot: str, timeout: float = 10.0) -> float:
        """Wait (bounded) until haproxy's own health check has marked ``slot`` UP."""
        return self.wait_status(slot, "UP", timeout)

    @property
    def pid(self) -> int | None:
        """PID of the running haproxy, or None."""
        return None if self._proc is None else self._proc.pid


__all__ = [
    "BACKEND",
    "HAProxy",
    "HAProxyError",
    "HAProxyNotInstalledError",
    "SlotState",
    "find_haproxy",
    "free_port",
]
