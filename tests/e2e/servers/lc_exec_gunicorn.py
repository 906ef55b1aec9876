"""Replica: plain gunicorn (gthread) under ``lifecycle exec --drain-delay 2``.

Run as ``python tests/e2e/servers/lc_exec_gunicorn.py PORT``: replaces
itself with ``python -m lifecycle exec --drain-delay 2 --stop-timeout 10 --
gunicorn ...``, the gunicorn of ``plain_gunicorn.py`` unchanged. lifecycle
gets the SIGTERM, keeps gunicorn serving for 2 s (the load balancer removes
the endpoint 1 s after the signal), then passes SIGTERM to gunicorn's master.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository

from tests.e2e.servers.plain_gunicorn import gunicorn_argv


def main() -> None:
    port = int(sys.argv[1])
    gunicorn = gunicorn_argv(port, "plain_gunicorn", "--worker-class", "gthread", "--threads", "8")
    argv = [
        sys.executable,
        "-m",
        "lifecycle",
        "exec",
        "--drain-delay",
        "2",
        "--stop-timeout",
        "10",
        "--",
        *gunicorn,
    ]
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
