"""A child for tests/test_exec.py: records the signals it gets, exits as told.

Usage::

    python -m tests.procs.exec_target RECORD [--exit N] [--ignore-term]
        [--term-exit N] [--orphan] [--wait] [--listen-after FILE PORT]

Every line it appends to the file RECORD is ``WHAT MONOTONIC [DETAIL]``,
written and flushed at once (``time.monotonic()`` is the system's
CLOCK_MONOTONIC, comparable with the test's own):

* ``started T PID`` once its handlers are installed;
* ``signal T NAME`` for each SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH,
  SIGQUIT, SIGINT it receives, in the order the kernel delivered them (the
  C-level handler writes each number to a socket, ``signal.set_wakeup_fd``,
  that the main thread reads: Python-level handlers could nest, and a
  later signal's line come first);
* ``orphan T PID PPID`` (with ``--orphan``): a grandchild it left behind has
  been reparented to PPID, and exits right after.

With ``--listen-after FILE PORT`` it listens on 127.0.0.1:PORT once FILE
exists (and records ``listening T PORT``).

Without ``--wait`` it exits at once with ``--exit`` N (default 0). With
``--wait`` it runs until SIGTERM, then exits with ``--term-exit`` N (default
0), or ignores SIGTERM with ``--ignore-term`` (and runs until killed). It
exits 0 on SIGQUIT.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time

RECORDED = ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGQUIT", "SIGINT")
RECORDED_MORE = ("SIGALRM", "SIGXCPU", "SIGPWR")  # where the platform has them
RECORDED_REALTIME = 5  # SIGRTMIN+5, where there are real-time signals


def name_of(signum: int) -> str:
    low = getattr(signal, "SIGRTMIN", None)
    if low is not None and signum == low + RECORDED_REALTIME:
        return f"SIGRTMIN+{RECORDED_REALTIME}"
    return signal.Signals(signum).name


def record(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def leave_orphan(path: str) -> None:
    """Fork a grandchild through a middle process that exits: it is orphaned at once."""
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:  # the grandchild
            first = os.getppid()
            deadline = time.monotonic() + 10
            while os.getppid() == first and time.monotonic() < deadline:
                time.sleep(0.01)
            record(path, f"orphan {time.monotonic()} {os.getpid()} {os.getppid()}")
            os._exit(0)
        os._exit(0)  # the middle process: its child is orphaned now
    os.waitpid(middle, 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("record")
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--term-exit", type=int, default=0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--orphan", action="store_true")
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--listen-after", nargs=2, metavar=("FILE", "PORT"))
    args = parser.parse_args()
    path = args.record

    def on_signal(signum: int, frame: object) -> None:
        pass  # the C-level handler wrote the number to the wake-up socket

    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    for name in RECORDED + RECORDED_MORE:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    if hasattr(signal, "SIGRTMIN"):
        signal.signal(signal.SIGRTMIN + RECORDED_REALTIME, on_signal)
    record(path, f"started {time.monotonic()} {os.getpid()}")
    if args.orphan:
        leave_orphan(path)
    if args.listen_after:
        trigger, port = args.listen_after
        deadline = time.monotonic() + 30
        while not os.path.exists(trigger) and time.monotonic() < deadline:
            time.sleep(0.01)
        listener = socket.create_server(("127.0.0.1", int(port)))  # open until exit
        record(path, f"listening {time.monotonic()} {port} {listener.fileno()}")
    if not args.wait:
        sys.exit(args.exit)
    while True:
        for signum in reader.recv(4096):
            name = name_of(signum)
            record(path, f"signal {time.monotonic()} {name}")
            if name == "SIGTERM" and not args.ignore_term:
                sys.exit(args.term_exit)
            if name == "SIGQUIT":
                sys.exit(0)


if __name__ == "__main__":
    main()
