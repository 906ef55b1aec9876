"""Replica: gunicorn with lifecycle's worker class, ``lifecycle.gunicorn.ThreadWorker``.

Run as ``python tests/e2e/servers/lc_gunicorn_worker.py PORT``: replaces
itself with gunicorn (2 workers, graceful timeout 10 s, a 2 s drain delay
through ``-e LIFECYCLE_DRAIN_DELAY=2``) serving `application`. Endpoints as
``naive.py``, but ``GET /readyz`` answers 503 once the worker got SIGTERM
(`lifecycle.gunicorn.ready`).

For tests/test_gunicorn.py it also serves ``GET /hold?ms=N&mark=PATH``:
creates the file PATH (the request is in flight), then sleeps N ms, then
answers.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIEnvironment

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository

import lifecycle.gunicorn
from tests.e2e.servers.plain_gunicorn import gunicorn_argv, respond, work


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/readyz":
        if lifecycle.gunicorn.ready():
            return respond(start_response, "200 OK", b"ready\n")
        return respond(start_response, "503 Service Unavailable", b"draining\n")
    if path == "/hold":
        query = parse_qs(environ["QUERY_STRING"])
        Path(query["mark"][0]).touch()
        time.sleep(int(query["ms"][0]) / 1000)
        return respond(start_response, "200 OK", b"held\n")
    answered = work(environ, start_response)
    if answered is not None:
        return answered
    return respond(start_response, "404 Not Found", b"not found\n")


def main() -> None:
    port = int(sys.argv[1])
    argv = gunicorn_argv(
        port,
        "lc_gunicorn_worker",
        "--worker-class",
        "lifecycle.gunicorn.ThreadWorker",
        "--env",
        "LIFECYCLE_DRAIN_DELAY=2",
    )
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
