"""Requests lost in a Kubernetes-style rolling restart behind haproxy, per server kind.

Run from the repository root::

    python -m benchmarks.rolling [--runs N] [--kinds naive,stdlib_shutdown] [--timeline]

Each run replaces 2 replicas one by one under 16 closed-loop clients (see
``tests/e2e/roll.py``) and prints one row. To measure another server kind,
add one line to ``SERVERS``: its name and the argv that starts one replica
(the port is appended, or replaces ``{port}``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.e2e.haproxy import HAProxyNotInstalledError, find_haproxy
from tests.e2e.roll import RollResult, rolling_restart

ROOT = Path(__file__).resolve().parent.parent
SERVERS_DIR = ROOT / "tests" / "e2e" / "servers"

SERVERS: dict[str, list[str]] = {
    "naive": [sys.executable, str(SERVERS_DIR / "naive.py")],
    "stdlib_shutdown": [sys.executable, str(SERVERS_DIR / "stdlib_shutdown.py")],
    "lifecycle http": [sys.executable, str(SERVERS_DIR / "lc_http.py")],
    "lifecycle asyncio": [sys.executable, str(SERVERS_DIR / "lc_asyncio.py")],
    "lifecycle wsgi": [sys.executable, str(SERVERS_DIR / "lc_wsgi.py")],
    "plain uvicorn": [sys.executable, str(SERVERS_DIR / "plain_uvicorn.py")],
    "lc uvicorn": [sys.executable, str(SERVERS_DIR / "lc_uvicorn.py")],
    "lc fastapi": [sys.executable, str(SERVERS_DIR / "lc_fastapi.py")],
    "plain aiohttp": [sys.executable, str(SERVERS_DIR / "lc_aiohttp.py"), "{port}", "--plain"],
    "lc aiohttp": [sys.executable, str(SERVERS_DIR / "lc_aiohttp.py")],
    "plain gunicorn": [sys.executable, str(SERVERS_DIR / "plain_gunicorn.py")],
    "gunicorn worker": [sys.executable, str(SERVERS_DIR / "lc_gunicorn_worker.py")],
    "gunicorn exec": [sys.executable, str(SERVERS_DIR / "lc_exec_gunicorn.py")],
}

HEADER = (
    f"{'kind':<18} {'run':>3} {'sent':>6} {'failed':>6} {'max shutdown s':>14} "
    f"{'exit codes':<12} failure kinds"
)


def format_row(kind: str, run: int, result: RollResult) -> str:
    """One table row for one roll."""
    codes = ",".join(str(c) for c in result.exit_codes)
    if any(e.killed for e in result.exits):
        codes += " (killed)"
    return (
        f"{kind:<18} {run:>3} {result.load.sent:>6} {result.load.failed:>6} "
        f"{result.max_shutdown_seconds:>14.2f} {codes:<12} {result.load.describe_failures()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="rolls per server kind")
    parser.add_argument(
        "--kinds",
        default=",".join(SERVERS),
        help=f"comma-separated server kinds (known: {', '.join(SERVERS)})",
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--lb-lag", type=float, default=1.0, help="seconds SIGTERM -> maint")
    parser.add_argument("--timeline", action="store_true", help="print each roll's timeline")
    args = parser.parse_args(argv)

    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in SERVERS]
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(unknown)}; known: {', '.join(SERVERS)}")
    try:
        find_haproxy()
    except HAProxyNotInstalledError as exc:
        print(exc, file=sys.stderr)
        return 2

    print(HEADER, flush=True)
    failed_rolls = 0
    for kind in kinds:
        for run in range(1, args.runs + 1):
            try:
                result = rolling_restart(
                    SERVERS[kind],
                    replicas=args.replicas,
                    clients=args.clients,
                    lb_lag=args.lb_lag,
                    ready_timeout=20.0,  # gunicorn's master and workers boot in seconds
                )
            except Exception as exc:
                failed_rolls += 1
                print(f"{kind:<18} {run:>3}  roll failed: {exc}", flush=True)
                continue
            print(format_row(kind, run, result), flush=True)
            if args.timeline:
                print(result.timeline(), flush=True)
    return 1 if failed_rolls else 0


if __name__ == "__main__":
    sys.exit(main())
