"""Requests lost in a Kubernetes-style rolling restart behind haproxy, per server kind.

Run from the repository root::

    python -m benchmarks.rolling [--runs N] [--kinds naive,stdlib_shutdown] [--timeline]
    python -m benchmarks.rolling --drain-compare [--runs N]
    python -m benchmarks.rolling --json rolls.json ...   # each roll also as a JSON record

Each run replaces 2 replicas one by one under 16 closed-loop clients (see
``tests/e2e/roll.py``) and prints one row. To measure another server kind,
add one line to ``SERVERS``: its name and the argv that starts one replica
(the port is appended, or replaces ``{port}``).

``--drain-compare`` rolls ``lifecycle.HTTPServer`` replicas twice, with the
same harness: a fixed 10 s drain delay, and ``Drain(min=1.5, max=10,
quiet=0.5)``, which ends once haproxy stopped sending (readiness 503, then
the endpoint removed ``--lb-lag`` s after SIGTERM). It prints each roll's lost
requests and duration (first SIGTERM to last exit), then the ratio of the
mean durations, adaptive / fixed. The rolls are paced by the shutdowns
(``--step 1``: a replica is replaced once the one before has exited and its
successor is up), not by a fixed schedule.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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

DRAIN_KINDS: dict[str, list[str]] = {
    "fixed 10s": [sys.executable, str(SERVERS_DIR / "lc_http.py"), "{port}", "--drain", "10"],
    "Drain(1.5,10,0.5)": [
        sys.executable,
        str(SERVERS_DIR / "lc_http.py"),
        "{port}",
        "--drain",
        "1.5,10,0.5",
    ],
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


def record(
    kind: str, run: int, result: RollResult | None, error: str | None = None
) -> dict[str, Any]:
    """One roll as a JSON-ready record (``--json``); a roll that failed has ``error``."""
    if result is None:
        return {"kind": kind, "run": run, "error": error}
    return {
        "kind": kind,
        "run": run,
        "sent": result.load.sent,
        "lost": result.lost,
        "failures": result.load.describe_failures(),
        "exit_codes": list(result.exit_codes),
        "max_shutdown_seconds": round(result.max_shutdown_seconds, 3),
        "roll_seconds": round(roll_seconds(result), 3),
    }


def _save(path: str | None, records: list[dict[str, Any]]) -> None:
    if path is not None:
        Path(path).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")


def roll_seconds(result: RollResult) -> float:
    """From the first SIGTERM to the last old replica's exit, in seconds."""
    sigterms = [t for t, what in result.events if what.startswith("SIGTERM")]
    exits = [t for t, what in result.events if " exited " in what]
    return max(exits) - min(sigterms) if sigterms and exits else float("nan")


def drain_compare(args: argparse.Namespace) -> int:
    """Roll with a fixed 10 s drain and with an adaptive `Drain`; print both and the ratio."""
    print(f"{'drain':<18} {'run':>3} {'sent':>6} {'lost':>5} {'roll s':>7} {'shutdowns s':<14}")
    durations: dict[str, list[float]] = {k: [] for k in DRAIN_KINDS}
    lost: dict[str, int] = dict.fromkeys(DRAIN_KINDS, 0)
    records: list[dict[str, Any]] = []
    failed_rolls = 0
    for kind, cmd in DRAIN_KINDS.items():
        for run in range(1, args.runs + 1):
            try:
                result = rolling_restart(
                    cmd,
                    replicas=args.replicas,
                    clients=args.clients,
                    lb_lag=args.lb_lag,
                    step_interval=args.step,
                )
            except Exception as exc:
                failed_rolls += 1
                print(f"{kind:<18} {run:>3}  roll failed: {exc}", flush=True)
                records.append(record(kind, run, None, str(exc)))
                continue
            records.append(record(kind, run, result))
            seconds = roll_seconds(result)
            durations[kind].append(seconds)
            lost[kind] += result.lost
            shutdowns = ",".join(f"{e.shutdown_seconds:.2f}" for e in result.exits)
            print(
                f"{kind:<18} {run:>3} {result.load.sent:>6} {result.lost:>5} {seconds:>7.2f} "
                f"{shutdowns:<14} {result.load.describe_failures()}",
                flush=True,
            )
            if args.timeline:
                print(result.timeline(), flush=True)
    fixed, adaptive = (durations[k] for k in DRAIN_KINDS)
    if fixed and adaptive:
        ratio = (sum(adaptive) / len(adaptive)) / (sum(fixed) / len(fixed))
        verdict = "ok" if ratio <= 0.4 and not any(lost.values()) else "MISSED"
        print(
            f"roll duration ratio adaptive/fixed: {ratio:.2f} (target <= 0.40); lost: "
            + ", ".join(f"{k} {n}" for k, n in lost.items())
            + f" -> {verdict}",
            flush=True,
        )
    _save(args.json, records)
    return 1 if failed_rolls else 0


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
    parser.add_argument(
        "--drain-compare",
        action="store_true",
        help="roll lifecycle.HTTPServer with a fixed 10 s drain and with Drain(1.5, 10, 0.5)",
    )
    parser.add_argument(
        "--step",
        type=float,
        default=1.0,
        help="--drain-compare: seconds between SIGTERMs, at least",
    )
    parser.add_argument("--json", metavar="PATH", help="also write each roll as a JSON record")
    args = parser.parse_args(argv)
    if args.drain_compare:
        try:
            find_haproxy()
        except HAProxyNotInstalledError as exc:
            print(exc, file=sys.stderr)
            return 2
        return drain_compare(args)

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
    records: list[dict[str, Any]] = []
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
                records.append(record(kind, run, None, str(exc)))
                continue
            records.append(record(kind, run, result))
            print(format_row(kind, run, result), flush=True)
            if args.timeline:
                print(result.timeline(), flush=True)
    _save(args.json, records)
    return 1 if failed_rolls else 0


if __name__ == "__main__":
    sys.exit(main())
