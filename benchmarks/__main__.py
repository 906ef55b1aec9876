"""``python -m benchmarks``: every benchmark in one run, written up as one report.

Run from the repository root::

    python -m benchmarks                     # the full set; writes benchmarks/RESULTS.md + SVG
    python -m benchmarks --smoke --out /tmp/RESULTS.md    # a short version of each (CI)
    python -m benchmarks --only rolling,tokens            # some of them
    python -m benchmarks --soak 600          # also the soak of back-to-back rolls (by hand)

Each benchmark is a script of this folder that measures its baseline in the
same run and prints a table; this runs each in a child process (bounded by a
timeout), and writes, in ``--out``:

* the machine it ran on (CPU, cores, memory, Python, load average before and
  after, the commit), and the date;
* for each benchmark: what it compares against, the command that reproduces
  it, how long it took, and its table as printed;
* the requests lost per rolling deploy, per server kind, as a table and as a
  self-contained SVG bar chart beside the report (``lost-per-roll.svg``);
* the soak's last result with its date: ``--soak SECONDS`` runs it (every
  lifecycle server kind rolled in turn behind haproxy for that long); without
  it, the soak section of the report already at ``--out`` is kept.

A benchmark whose tool is missing (haproxy, redis-server) is reported as
skipped, naming the package to install. The exit code is 1 if a benchmark
failed or timed out, 0 otherwise (targets missed are in the tables; each
script's ``--check`` turns them into its exit code).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import html
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "RESULTS.md"
SVG_NAME = "lost-per-roll.svg"
SOAK_BEGIN = "<!-- soak: kept between runs; python -m benchmarks --soak 600 replaces it -->"
SOAK_END = "<!-- /soak -->"
# Server kinds of the rolling benchmark that are lifecycle's (the others are baselines).
LIFECYCLE_KINDS = frozenset(
    {
        "lifecycle http",
        "lifecycle asyncio",
        "lifecycle wsgi",
        "lc uvicorn",
        "lc fastapi",
        "lc aiohttp",
        "gunicorn worker",
        "gunicorn exec",
    }
)


@attrs.frozen
class Bench:
    """One benchmark script and how to run it.

    Attributes:
        name: the module in ``benchmarks/`` (``"tokens"`` runs ``benchmarks.tokens``).
        title: what it measures, in a few words.
        baseline: what it is compared against, in the same run.
        full: its arguments for the full run.
        smoke: its arguments for ``--smoke``; None: left out of a smoke run (its
            claim is proved by a test of the suite already).
        needs: programs it needs in PATH (it is skipped without them).
        timeout: seconds it may take in a full run (a smoke run gets a third, at least 120).
        rolls: whether it writes rolls with ``--json`` (the rolling benchmark).
    """

    name: str
    title: str
    baseline: str
    full: tuple[str, ...] = ()
    smoke: tuple[str, ...] | None = ()
    needs: tuple[str, ...] = ()
    timeout: float = 600.0
    rolls: bool = False


# The smoke set of server kinds: every baseline the report compares with, and
# lifecycle's kinds for the same servers.
_SMOKE_KINDS = ",".join(
    [
        "naive",
        "lifecycle http",
        "plain uvicorn",
        "lc uvicorn",
        "plain gunicorn",
        "gunicorn worker",
    ]
)

BENCHES: tuple[Bench, ...] = (
    Bench("tokens", "cancellation tokens: checks, cancels, deadlines", "threading.Event"),
    Bench(
        "engine",
        "the scheduler: ordered, concurrent starts and stops",
        "a sequential stop of the same graph",
        smoke=("--repeat", "1"),
    ),
    Bench(
        "runners",
        "SIGTERM to exit, and the stop's critical path",
        "bare threads stopping the same components",
        smoke=("--exits", "3", "--repeat", "1"),
    ),
    Bench(
        "serving_sync",
        "per-request cost of the threaded servers",
        "the stdlib's ThreadingHTTPServer and wsgiref",
        smoke=("--rounds", "2", "--seconds", "0.5"),
    ),
    Bench(
        "serving_async",
        "per-request cost of the asyncio server and ASGI middleware",
        "a plain asyncio.start_server handler",
        smoke=("--rounds", "1", "--duration", "1"),
    ),
    Bench("h1", "the strict HTTP/1.1 parser", "http.server's parsing"),
    Bench("health", "probe latency under slow clients", "the probes with no slow clients"),
    Bench(
        "uvicorn",
        "lifecycle.uvicorn.Server per-request CPU",
        "plain uvicorn, same app",
        smoke=("--rounds", "1", "--duration", "1", "--apps", "asgi"),
    ),
    Bench(
        "aiohttp",
        "lifecycle.aiohttp.Server per-request CPU",
        "plain aiohttp web.AppRunner",
        smoke=("--rounds", "4"),
    ),
    Bench(
        "counted",
        "per-request cost counted on a simulated CPU (cachegrind): the same every run",
        "the same request paths without lifecycle",
        smoke=None,  # the suite runs every row's request path (tests/test_counted.py)
        needs=("valgrind",),
        timeout=3600.0,
    ),
    Bench(
        "grpc",
        "lifecycle.grpc.Server per-RPC cost",
        "a plain grpc.server",
        smoke=("--rounds", "1", "--seconds", "1"),
    ),
    Bench(
        "rolling",
        "requests lost in a rolling deploy behind haproxy, per server kind",
        "naive, stdlib, plain uvicorn, aiohttp and gunicorn replicas in the same harness",
        full=("--runs", "3"),
        smoke=("--runs", "1", "--kinds", _SMOKE_KINDS),
        needs=("haproxy",),
        timeout=2400.0,
        rolls=True,
    ),
    Bench(
        "rolling",
        "roll duration: an adaptive Drain against a fixed 10 s drain",
        "the same roll with a fixed 10 s drain delay",
        full=("--drain-compare", "--runs", "2"),
        smoke=None,  # tests/test_drain.py drives the adaptive drain through real servers
        needs=("haproxy",),
        timeout=600.0,
    ),
    Bench(
        "redis_streams",
        "messages lost in a roll of Redis Streams consumers",
        "a plain XREADGROUP + XACK loop",
        smoke=("--messages", "500", "--sigterms", "1", "--sigkills", "1", "--produce-seconds", "2"),
        needs=("redis-server",),
        timeout=900.0,
    ),
)


@attrs.frozen
class Outcome:
    """What running one benchmark gave.

    Attributes:
        bench: the benchmark.
        argv: the arguments it ran with (``--json`` left out).
        seconds: how long it took.
        status: ``"ok"``, ``"failed (exit N)"``, ``"timed out after N s"`` or ``"skipped: ..."``.
        output: what it printed (stdout, then stderr if any).
        rolls: the rolls it recorded (the rolling benchmark), else empty.
    """

    bench: Bench
    argv: tuple[str, ...]
    seconds: float
    status: str
    output: str
    rolls: tuple[dict[str, Any], ...] = ()

    @property
    def command(self) -> str:
        """The command that reproduces it, from the repository root."""
        args = " ".join(_quote(a) for a in self.argv)
        return f"python -m benchmarks.{self.bench.name}" + (f" {args}" if args else "")

    @property
    def failed(self) -> bool:
        return not (self.status == "ok" or self.status.startswith("skipped"))


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w.,=/:-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def run_bench(bench: Bench, *, smoke: bool, python: str = sys.executable) -> Outcome:
    """Run one benchmark in a child process, bounded by its timeout; never raises."""
    if smoke and bench.smoke is None:
        return Outcome(bench, bench.full, 0.0, "skipped in --smoke: run it in full", "")
    argv = (bench.smoke or ()) if smoke else bench.full
    missing = [tool for tool in bench.needs if shutil.which(tool) is None]
    if missing:
        names = ", ".join(missing)
        why = f"skipped: {names} not installed (apt-get install -y {' '.join(missing)})"
        return Outcome(bench, argv, 0.0, why, "")
    timeout = max(120.0, bench.timeout / 3) if smoke else bench.timeout
    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as tmp:
        rolls_path = Path(tmp) / "rolls.json"
        extra = ("--json", str(rolls_path)) if bench.rolls else ()
        began = time.monotonic()
        proc = subprocess.Popen(
            [python, "-m", f"benchmarks.{bench.name}", *argv, *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: a timeout ends all it started
        )
        try:
            out, err = proc.communicate(timeout=timeout)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate(timeout=30)
            status = f"timed out after {timeout:g} s"
        seconds = time.monotonic() - began
        rolls: tuple[dict[str, Any], ...] = ()
        if rolls_path.exists():
            rolls = tuple(json.loads(rolls_path.read_text(encoding="utf-8")))
    output = out.rstrip() + ("\n" + err.rstrip() if err.strip() else "")
    return Outcome(bench, argv, seconds, status, output, rolls)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """End the benchmark's process group (it started servers, haproxy, redis-server)."""
    try:
        os.killpg(proc.pid, 15)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)


# -- the machine -------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        names = re.findall(r"^model name\s*:\s*(.+)$", info, re.M)
        if names:
            cpu = names[0].strip()
        mem = Path("/proc/meminfo").read_text(encoding="utf-8", errors="replace")
        kib = re.search(r"^MemTotal:\s*(\d+)", mem, re.M)
        if kib:
            memory = f"{int(kib.group(1)) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count() or "?"),
        "memory": memory or "?",
        "os": platform.platform(),
        "python": platform.python_version(),
        "commit": _commit(),
    }


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# -- the picture ----------------------------------------------------------------------


def lost_per_kind(rolls: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The completed rolls, grouped by server kind, in the order they ran."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for roll in rolls:
        if "lost" in roll:
            kinds.setdefault(str(roll["kind"]), []).append(roll)
    return kinds


def lost_svg(rolls: Sequence[dict[str, Any]], subtitle: str = "") -> str:
    """A self-contained SVG bar chart: mean requests lost per roll, one bar per server kind.

    Baselines are drawn red, lifecycle's kinds green; each bar is labelled
    with the losses of every roll. No script, no external reference.

    Example::

        svg = lost_svg([{"kind": "naive", "run": 1, "lost": 96, "sent": 3400}])
        assert svg.startswith("<svg")
    """
    kinds = lost_per_kind(rolls)
    row, left, chart, top = 30, 190, 460, 56
    width = left + chart + 170
    height = top + row * max(1, len(kinds)) + 40
    worst = max((sum(r["lost"] for r in rs) / len(rs) for rs in kinds.values()), default=0.0)
    scale = chart / worst if worst > 0 else 0.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        '<text x="12" y="22" font-size="15" font-weight="bold">'
        "Requests lost per rolling deploy (mean per roll)</text>",
        f'<text x="12" y="40" fill="#555555">{html.escape(subtitle)}</text>',
    ]
    if not kinds:
        parts.append(f'<text x="12" y="{top + 18}">no completed rolls</text>')
    for i, (kind, rs) in enumerate(kinds.items()):
        y = top + i * row
        mean = sum(r["lost"] for r in rs) / len(rs)
        ours = kind in LIFECYCLE_KINDS
        colour = "#2e7d32" if ours else "#c62828"
        bar = max(2.0, mean * scale) if mean > 0 else 0.0
        label = ", ".join(str(r["lost"]) for r in rs)
        sent = round(sum(r.get("sent", 0) for r in rs) / len(rs))
        parts += [
            f'<text x="{left - 8}" y="{y + 17}" text-anchor="end"'
            f'{" font-weight=" + chr(34) + "bold" + chr(34) if ours else ""}>'
            f"{html.escape(kind)}</text>",
            f'<rect x="{left}" y="{y + 5}" width="{bar:.1f}" height="{row - 10}" '
            f'fill="{colour}"><title>{html.escape(kind)}: lost {label} of ~{sent}</title></rect>',
            f'<text x="{left + bar + 6:.1f}" y="{y + 17}" fill="{colour}">'
            f"{html.escape(label)} of ~{sent}</text>",
        ]
    axis_y = top + row * max(1, len(kinds)) + 4
    parts += [
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="#333333"/>',
        f'<text x="{left}" y="{axis_y + 22}" fill="#555555">'
        "red: baselines in the same harness; green: lifecycle</text>",
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


# -- the report -----------------------------------------------------------------------


def _soak_section(previous: str | None, soak: Outcome | None, now: str) -> str:
    if soak is not None:
        body = (
            f"Run {now} with `LIFECYCLE_SOAK_SECONDS={soak.argv[0]} python -m pytest "
            f"tests/e2e/test_soak.py -s` ({soak.seconds:.0f} s, {soak.status}): every "
            "lifecycle server kind rolled in turn behind haproxy.\n\n"
            f"```text\n{soak.output}\n```"
        )
    elif previous is not None and SOAK_BEGIN in previous and SOAK_END in previous:
        body = previous.split(SOAK_BEGIN, 1)[1].split(SOAK_END, 1)[0].strip()
    else:
        body = "Not run yet: `python -m benchmarks --soak 600` runs it (about 11 minutes)."
    return f"{SOAK_BEGIN}\n{body}\n{SOAK_END}"


def report(
    outcomes: Sequence[Outcome],
    *,
    info: dict[str, str],
    began: str,
    load_before: str,
    load_after: str,
    smoke: bool,
    previous: str | None = None,
    soak: Outcome | None = None,
    svg_name: str = SVG_NAME,
) -> str:
    """The report's Markdown."""
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m benchmarks{' --smoke' if smoke else ''}` on {began} (commit "
        f"`{info['commit']}`). Every figure is printed beside its baseline, measured in the "
        "same run on the same machine; timings move with the machine's load, given here.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {info['cpu']} |",
        f"| cores | {info['cores']} |",
        f"| memory | {info['memory']} |",
        f"| OS | {info['os']} |",
        f"| Python | {info['python']} |",
        f"| load average before / after (1, 5, 15 min) | {load_before} / {load_after} |",
        "",
    ]
    rolls = [r for o in outcomes for r in o.rolls]
    kinds = lost_per_kind(rolls)
    if kinds:
        lines += [
            "## Requests lost per rolling deploy",
            "",
            f"![Requests lost per roll, per server kind]({svg_name})",
            "",
            "| server kind | lost per roll | sent per roll | exit codes of the old replicas |",
            "|---|---|---|---|",
        ]
        for kind, rs in kinds.items():
            ours = kind in LIFECYCLE_KINDS
            lost = ", ".join(str(r["lost"]) for r in rs)
            sent = round(sum(r["sent"] for r in rs) / len(rs))
            codes = "; ".join(",".join(str(c) for c in r["exit_codes"]) for r in rs)
            name = f"**{kind}**" if ours else kind
            lines.append(f"| {name} | {f'**{lost}**' if ours else lost} | {sent} | {codes} |")
        failed = [r for r in rolls if "error" in r]
        for r in failed:
            lines.append(f"| {r['kind']} | roll {r['run']} failed: {r['error']} | | |")
        lines.append("")
    lines += ["## Each benchmark", ""]
    for o in outcomes:
        lines += [
            f"### {o.bench.name}: {o.bench.title}",
            "",
            f"Baseline: {o.bench.baseline}. Reproduce: `{o.command}`. "
            f"{o.seconds:.0f} s, {o.status}.",
            "",
        ]
        if o.output:
            lines += ["```text", o.output, "```", ""]
    lines += [
        "## Soak: back-to-back rolls of every lifecycle server kind",
        "",
        _soak_section(previous, soak, began),
        "",
    ]
    return "\n".join(lines)


def run_soak(seconds: float, python: str = sys.executable) -> Outcome:
    """The soak: ``tests/e2e/test_soak.py`` for ``seconds``, its lines as the output."""
    bench = Bench("soak", "back-to-back rolls", "none", needs=("haproxy",))
    if shutil.which("haproxy") is None:
        return Outcome(bench, (f"{seconds:g}",), 0.0, "skipped: haproxy not installed", "")
    began = time.monotonic()
    env = {**os.environ, "LIFECYCLE_SOAK_SECONDS": f"{seconds:g}"}
    try:
        done = subprocess.run(
            [python, "-m", "pytest", "tests/e2e/test_soak.py", "-s", "-q"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 600,
            check=False,
        )
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout.rstrip()
    except subprocess.TimeoutExpired as expired:
        status, output = f"timed out after {seconds + 600:g} s", str(expired.stdout or "")
    return Outcome(bench, (f"{seconds:g}",), time.monotonic() - began, status, output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    names = sorted({b.name for b in BENCHES})
    parser.add_argument("--smoke", action="store_true", help="a short version of each (CI)")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(names)}")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="the report (default benchmarks/RESULTS.md)"
    )
    parser.add_argument(
        "--soak", type=float, metavar="SECONDS", help="also run the soak for SECONDS (600)"
    )
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n]
    unknown = [n for n in only if n not in names]
    if unknown:
        parser.error(
            f"--only: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}"
        )
    if args.soak is not None and not 0 < args.soak <= 3600:
        parser.error(f"--soak must be a number of seconds in (0, 3600], got {args.soak:g}")
    if not args.out.parent.is_dir():
        parser.error(f"--out {args.out}: the folder {args.out.parent} does not exist")
    chosen = [b for b in BENCHES if not only or b.name in only]
    began = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = _load()
    outcomes = []
    for bench in chosen:
        print(f"== {bench.name}: {bench.title}", flush=True)
        outcome = run_bench(bench, smoke=args.smoke)
        print(outcome.output, flush=True)
        print(f"-- {outcome.seconds:.0f} s, {outcome.status}", flush=True)
        outcomes.append(outcome)
    soak = run_soak(args.soak) if args.soak is not None else None
    if soak is not None:
        print(soak.output, flush=True)
    previous = args.out.read_text(encoding="utf-8") if args.out.exists() else None
    text = report(
        outcomes,
        info=machine(),
        began=began,
        load_before=load_before,
        load_after=_load(),
        smoke=args.smoke,
        previous=previous,
        soak=soak,
    )
    args.out.write_text(text, encoding="utf-8")
    rolls = [r for o in outcomes for r in o.rolls]
    if lost_per_kind(rolls):
        subtitle = "2 replicas behind haproxy, retries off, 16 keep-alive clients"
        (args.out.parent / SVG_NAME).write_text(lost_svg(rolls, subtitle), encoding="utf-8")
    print(f"== report written to {args.out}", flush=True)
    bad = [o for o in [*outcomes, *([soak] if soak else [])] if o.failed]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
