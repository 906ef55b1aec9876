"""A handshake under way when the listener begins refusing: does it still complete?

Run as root in a network namespace of its own (``unshare -n python -m
tests.procs.halfopen``): a client written by hand behind a tun device
answers the listener's SYN-ACK only when told, so the order of the packets
is fixed. Prints one JSON line: what the listener took in of the handshake
begun before `refuse_new_connections`, and whether a SYN sent after it was
answered.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import time

from lifecycle._serving.listening import refuse_new_connections

_TUNSETIFF, _IFF_TUN, _IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
_SERVER, _CLIENT = socket.inet_aton("10.9.0.1"), socket.inet_aton("10.9.0.2")
_SYN, _ACK, _PSH = 0x02, 0x10, 0x08
_REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
BOUND = 2.0  # seconds a packet from the listener is waited for


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


class Client:
    """A TCP client's packets, written to and read from the tun device by hand."""

    def __init__(self) -> None:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        self.tun = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(self.tun, _TUNSETIFF, struct.pack("16sH", b"tun0", _IFF_TUN | _IFF_NO_PI))
        subprocess.run(["ip", "addr", "add", "10.9.0.1/24", "dev", "tun0"], check=True)
        subprocess.run(["ip", "link", "set", "tun0", "up"], check=True)

    def send(
        self, sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes = b""
    ) -> None:
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + data
        check = _checksum(_CLIENT + _SERVER + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
        tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, _CLIENT, _SERVER)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        os.write(self.tun, ip + tcp)

    def receive(self, port: int, to: int, timeout: float = BOUND) -> tuple[int, int] | None:
        """The next segment from the listener's ``port`` to ``to``: (seq, flags), or None."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.tun], [], [], left)
            if not ready:
                break
            packet = os.read(self.tun, 65535)
            if packet[0] >> 4 != 4 or packet[9] != 6:
                continue  # not IPv4 TCP (router solicitations and the like)
            tcp = packet[(packet[0] & 15) * 4 :]
            sport, dport, seq, _, _, flags = struct.unpack("!HHIIBB", tcp[:14])
            if (sport, dport) == (port, to):
                return seq, flags
        return None


def main() -> None:
    client = Client()
    listener = socket.create_server(("10.9.0.1", 0), backlog=16)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    client.send(40001, port, 1000, 0, _SYN)  # a handshake begins before the stop
    answer = client.receive(port, 40001)
    assert answer is not None, "no SYN-ACK from the listener"
    assert answer[1] == _SYN | _ACK, answer
    refused = refuse_new_connections(listener)
    client.send(40001, port, 1001, answer[0] + 1, _PSH | _ACK, _REQUEST)  # its last ACK
    client.send(40002, port, 5000, 0, _SYN)  # a new handshake, after the refusal began
    late = client.receive(port, 40002, timeout=0.5)
    taken: list[bytes] = []
    end = time.monotonic() + BOUND
    while not taken and time.monotonic() < end:  # the take-in, bounded
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            select.select([listener], [], [], 0.05)
            continue
        conn.settimeout(BOUND)
        taken.append(conn.recv(len(_REQUEST)))
        conn.close()
    listener.close()
    print(json.dumps({"refused": refused, "taken": [t.decode() for t in taken], "late": late}))


if __name__ == "__main__":
    main()
