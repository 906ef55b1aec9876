"""Baseline replica: plain gunicorn with its gthread worker, graceful stop as gunicorn does it.

Run as ``python tests/e2e/servers/plain_gunicorn.py PORT``: replaces itself
with ``gunicorn --worker-class gthread`` (2 workers x 8 threads, graceful
timeout 10 s) serving `application` on 127.0.0.1:PORT. Same endpoints as
``naive.py``: ``GET /work?ms=N`` sleeps N ms and replies a small body;
``GET /readyz`` always answers 200 (gunicorn has no readiness of its own).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIEnvironment

HERE = Path(__file__).resolve().parent


def respond(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def work(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes] | None:
    """``/work?ms=N``; None for another path."""
    if environ["PATH_INFO"] != "/work":
        return None
    ms = int(parse_qs(environ["QUERY_STRING"]).get("ms", ["0"])[0])
    time.sleep(ms / 1000)
    return respond(start_response, "200 OK", b"done\n")


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/readyz":
        return respond(start_response, "200 OK", b"ready\n")
    answered = work(environ, start_response)
    if answered is not None:
        return answered
    return respond(start_response, "404 Not Found", b"not found\n")


def gunicorn_argv(port: int, module: str, *extra: str) -> list[str]:
    """``python -m gunicorn`` serving ``module:application`` on 127.0.0.1:``port``."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--graceful-timeout",
        "10",
        "--no-control-socket",
        "--pythonpath",
        str(HERE),
        *extra,
        f"{module}:application",
    ]


def main() -> None:
    port = int(sys.argv[1])
    argv = gunicorn_argv(port, "plain_gunicorn", "--worker-class", "gthread", "--threads", "8")
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
