"""The command line's app commands: ``lifecycle run|check|graph|k8s``, ``--version``, ``--help``.

The commands run as real processes (``python -m lifecycle`` and the installed
``lifecycle`` script) on the example apps of ``tests/procs/cli_apps.py``;
``run`` gets real signals once its log says the app started. The plan
(``lifecycle._tools.plan``) is also checked in-process, over random graphs.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import pty
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lifecycle
from lifecycle import App
from lifecycle.__main__ import main
from lifecycle._tools.plan import LoadError, Plan, load_app, plan

ROOT = Path(__file__).resolve().parent.parent
BOUND = 20.0  # seconds any one wait on a child may take
APPS = "tests.procs.cli_apps"
SCRIPT = Path(sys.executable).parent / "lifecycle"
MODULE = [sys.executable, "-m", "lifecycle"]
LAUNCHERS = pytest.mark.parametrize(
    "launcher",
    [
        pytest.param(MODULE, id="python-m"),
        pytest.param(
            [str(SCRIPT)],
            id="script",
            marks=pytest.mark.skipif(not SCRIPT.exists(), reason="no installed lifecycle script"),
        ),
    ],
)


def cli(
    *args: str, cwd: Path = ROOT, launcher: list[str] = MODULE
) -> subprocess.CompletedProcess[str]:
    """Run a command that ends by itself (check, graph, --help, a bad spec), bounded."""
    return subprocess.run(
        [*launcher, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=BOUND * 2,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class Running:
    """``lifecycle run ...`` in its own session; its stdout read line by line on a thread."""

    def __init__(
        self, args: list[str], tmp: Path, launcher: list[str] = MODULE, cwd: Path = ROOT
    ) -> None:
        self.stderr_path = tmp / "stderr"
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [*launcher, "run", *args],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, fragment: str, timeout: float = BOUND) -> str:
        """The first (next) stdout line holding ``fragment``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                line = ""
                remaining = -1.0
            if line is None or remaining < 0:
                pytest.fail(
                    f"no line with {fragment!r} within {timeout}s (exit {self.proc.poll()}):\n"
                    + "\n".join(self.seen)
                    + f"\nstderr:\n{self.stderr()}"
                )
            self.seen.append(line)
            if fragment in line:
                return line

    def finish(self) -> tuple[int, list[str]]:
        """The exit code and every stdout line, once the process exited."""
        try:
            code = self.proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"lifecycle run did not exit within {BOUND}s:\n" + "\n".join(self.seen))
        self.reader.join(BOUND)
        while True:
            line = self.lines.get(timeout=BOUND)
            if line is None:
                break
            self.seen.append(line)
        return code, self.seen

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        """End the run if it is still alive (its own process group), and close its pipe."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(BOUND)
        self.reader.join(BOUND)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Running]]:
    """The runs a test started, killed (by their own process group) if still alive."""
    started: list[Running] = []
    yield started
    for r in started:
        r.kill()


def start(
    running: list[Running], tmp: Path, *args: str, launcher: list[str] = MODULE, cwd: Path = ROOT
) -> Running:
    r = Running(list(args), tmp, launcher, cwd)
    running.append(r)
    return r


def events(lines: list[str]) -> list[dict[str, Any]]:
    """Every line parsed as JSON (fails on the first line that is not)."""
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    return parsed


# -- run -----------------------------------------------------------------------------------


@pytest.mark.process
@LAUNCHERS
def test_run_until_sigterm_logs_json_lines_and_exits_0(launcher, tmp_path, running):
    """With stdout not a TTY, every line is a JSON event; SIGTERM once started: a clean 0."""
    r = start(running, tmp_path, f"{APPS}:app", launcher=launcher)
    r.wait_for('"app started"')
    r.proc.send_signal(signal.SIGTERM)
    code, lines = r.finish()
    assert code == 0, r.stderr()
    parsed = events(lines)
    names = [e["event"] for e in parsed]
    assert "lifecycle run" in names
    summary = next(e for e in parsed if e["event"] == "shutdown summary")
    assert summary["exit_code"] == 0
    assert summary["reason"] == "signal SIGTERM"
    assert set(summary["components"]) == {"db", "cache", "api", "mailer"}
    assert all({"level", "timestamp", "logger"} <= set(e) for e in parsed)


@pytest.mark.process
@pytest.mark.parametrize(
    ("spec", "runner"),
    [("make_app", "thread"), ("make_app", "asyncio"), ("async_app", "auto")],
)
def test_run_a_factory_under_each_runner(spec, runner, tmp_path, running):
    """A zero-argument factory is called; each runner runs it to a clean stop on SIGTERM."""
    r = start(running, tmp_path, f"{APPS}:{spec}", "--runner", runner)
    started = json.loads(r.wait_for('"lifecycle run"'))
    assert started["runner"] == runner
    r.wait_for('"app started"')
    r.proc.send_signal(signal.SIGTERM)
    code, _ = r.finish()
    assert code == 0, r.stderr()


@pytest.mark.process
def test_run_exits_1_when_a_critical_worker_fails(tmp_path, running):
    """The app's own exit code: a crashed critical worker is FAILED (1)."""
    r = start(running, tmp_path, f"{APPS}:failing")
    code, lines = r.finish()
    assert code == 1, r.stderr()
    summary = next(e for e in events(lines) if e["event"] == "shutdown summary")
    assert summary["exit_code"] == 1


@pytest.mark.process
def test_run_exits_3_when_a_stop_is_abandoned(tmp_path, running):
    """A stop that overruns its timeout is abandoned: TIMEOUT (3)."""
    r = start(running, tmp_path, f"{APPS}:stuck")
    r.wait_for('"app started"')
    r.proc.send_signal(signal.SIGTERM)
    code, _ = r.finish()
    assert code == 3, r.stderr()


@pytest.mark.process
def test_run_exits_2_on_an_invalid_declaration(tmp_path, running):
    """A dependency cycle: nothing starts, CONFIG (2), the cycle is logged."""
    r = start(running, tmp_path, f"{APPS}:cycle")
    code, lines = r.finish()
    assert code == 2, r.stderr()
    assert any("a -> b -> c -> a" in e.get("error", "") for e in events(lines))


@pytest.mark.process
@pytest.mark.parametrize("level", ["info", "warning"])
def test_run_renders_the_applications_stdlib_records_too(level, tmp_path, running):
    """The app's own stdlib records are JSON lines too; --log-level drops what is below it."""
    r = start(running, tmp_path, f"{APPS}:chatty", "--log-level", level)
    line = json.loads(r.wait_for('"mail queue empty"'))
    assert (line["logger"], line["level"]) == ("shop.mailer", "warning")
    r.proc.send_signal(signal.SIGTERM)
    code, lines = r.finish()
    assert code == 0, r.stderr()
    levels = {e["level"] for e in events(lines)}
    assert ("info" in levels) == (level == "info")


CONFIGURED = """\
import structlog, sys
import lifecycle

structlog.configure(
    processors=[lambda logger, method, event: "CUSTOM " + event["event"]],
    logger_factory=structlog.PrintLoggerFactory(sys.stdout),
)
app = lifecycle.App("own", shutdown_timeout=10, stop_timeout=3)


@app.worker
def idle(token):
    token.wait()
"""


@pytest.mark.process
@pytest.mark.parametrize("override", [False, True])
def test_run_keeps_the_applications_own_structlog_configuration(override, tmp_path, running):
    """An app that configured structlog at import keeps it, unless --log-format is given."""
    (tmp_path / "own_logging.py").write_text(CONFIGURED)
    options = ["--log-format", "json"] if override else []
    r = start(running, tmp_path, "own_logging:app", *options, cwd=tmp_path)
    line = r.wait_for("app started")
    if override:
        assert json.loads(line)["event"] == "app started"
    else:
        assert line == "CUSTOM app started"
    r.proc.send_signal(signal.SIGTERM)
    code, _ = r.finish()
    assert code == 0, r.stderr()


@pytest.mark.process
def test_run_log_format_plain(tmp_path, running):
    """--log-format plain: stdlib logging lines, ``event key=value``, not JSON."""
    r = start(running, tmp_path, f"{APPS}:app", "--log-format", "plain")
    line = r.wait_for("app started")
    assert "lifecycle: app started app=shop" in line
    r.proc.send_signal(signal.SIGTERM)
    code, lines = r.finish()
    assert code == 0, r.stderr()
    assert not any(line.startswith("{") for line in lines)


@pytest.mark.process
def test_run_on_a_terminal_logs_for_people(tmp_path):
    """With stdout a TTY, the default is structlog's console rendering, not JSON."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*MODULE, "run", f"{APPS}:app"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    finally:
        os.close(slave)
    chunks: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO once the child closed the terminal
                data = b""
            chunks.put(data)
            if not data:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    text = b""
    try:
        deadline = time.monotonic() + BOUND
        while b"app started" not in text:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no 'app started' on the terminal within {BOUND}s: {text!r}")
            try:
                data = chunks.get(timeout=remaining)
            except queue.Empty:
                continue
            if not data:
                pytest.fail(f"the terminal closed before 'app started': {text!r}")
            text += data
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(BOUND) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(BOUND)
        reader.join(BOUND)
        os.close(master)
        assert proc.stderr is not None
        proc.stderr.close()
    line = next(x for x in text.decode(errors="replace").splitlines() if "app started" in x)
    assert "\x1b[" in line  # coloured, on a terminal
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
    assert not plain.lstrip().startswith("{")
    assert "[info     ] app started" in plain  # the console renderer's level column


@pytest.mark.process
def test_run_a_bad_spec_exits_2_saying_what_to_type(tmp_path):
    """An unknown attribute: exit 2, one line naming it and what the module holds, no traceback."""
    done = cli("run", f"{APPS}:ap")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "has no attribute 'ap'" in done.stderr
    assert f"e.g. {APPS}:app" in done.stderr


@pytest.mark.process
def test_run_refuses_a_timeline_path_it_cannot_write_before_starting(tmp_path):
    """--timeline with a wrong suffix or a missing folder: exit 2 before anything runs."""
    done = cli("run", f"{APPS}:app", "--timeline", str(tmp_path / "shutdown.png"))
    assert done.returncode == 2
    assert ".svg" in done.stderr
    assert ".mmd" in done.stderr
    assert done.stdout == ""
    done = cli("run", f"{APPS}:app", "--timeline", str(tmp_path / "nowhere" / "t.svg"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr


@pytest.mark.process
@pytest.mark.parametrize("suffix", [".svg", ".mmd"])
def test_run_writes_the_timeline_after_the_run(suffix, tmp_path, running):
    """--timeline PATH: the shutdown timeline is drawn once the app stopped."""
    path = tmp_path / f"shutdown{suffix}"
    r = start(running, tmp_path, f"{APPS}:app", "--timeline", str(path))
    r.wait_for('"app started"')
    r.proc.send_signal(signal.SIGTERM)
    code, lines = r.finish()
    assert code == 0, r.stderr()
    assert "timeline written" in "\n".join(lines)
    text = path.read_text()
    assert ("<svg" in text) if suffix == ".svg" else text.strip()


# -- check ---------------------------------------------------------------------------------


@pytest.mark.process
def test_check_prints_the_order_waves_and_budget():
    """A valid app that fits: exit 0; the start order, the waves and the budget in text."""
    done = cli("check", f"{APPS}:app")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "start order: db, cache, mailer, api" in out
    assert "1. db" in out
    assert "2. cache, mailer" in out
    assert "3. api" in out
    assert "api 5s -> cache 2s -> db 5s" in out
    assert "needed             12s" in out
    assert "fits, with 18s to spare" in out


@pytest.mark.process
def test_check_json():
    """--format json: the plan, machine-readable."""
    done = cli("check", f"{APPS}:app", "--format", "json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["ok"] is True
    assert body["waves"] == [["db"], ["cache", "mailer"], ["api"]]
    assert body["stop_waves"] == [["mailer", "api"], ["cache"], ["db"]]
    assert body["stop_path"] == ["api", "cache", "db"]
    assert body["stop_budgets"] == [5.0, 2.0, 5.0]
    assert (body["needed"], body["shutdown_timeout"], body["overrun"]) == (12.0, 30.0, False)


@pytest.mark.process
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_check_exits_1_when_the_budget_overruns(fmt):
    """drain 5 + 10 + 10 > 20: exit 1, saying by how much and what to raise."""
    done = cli("check", f"{APPS}:overrun", "--format", fmt)
    assert done.returncode == 1, done.stderr
    if fmt == "json":
        body = json.loads(done.stdout)
        assert (body["needed"], body["overrun"], body["ok"]) == (25.0, True, False)
        assert body["health"] == ["127.0.0.1", 0]
    else:
        assert "OVERRUN by 5s" in done.stdout
        assert "shutdown_timeout to at least 25" in done.stdout


@pytest.mark.process
@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        ("cycle", "dependency cycle: a -> b -> c -> a"),
        ("unknown", "did you mean 'db'?"),
        ("duplicate", "a component named 'db' is already registered"),
    ],
)
def test_check_exits_2_on_an_invalid_declaration(attr, expected):
    """Cycles, unknown dependencies, duplicates: exit 2 with the declaration's own message."""
    done = cli("check", f"{APPS}:{attr}")
    assert done.returncode == 2
    assert expected in done.stderr
    assert "Traceback" not in done.stderr
    as_json = cli("check", f"{APPS}:{attr}", "--format", "json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["ok"] is False


@pytest.mark.usefixtures("isolated_path")
def test_check_json_has_null_for_no_limit(capsys):
    """An infinite timeout is null in the JSON (which has no Infinity); text says no limit."""

    def refuse(constant: str) -> None:
        pytest.fail(f"not JSON: {constant}")

    assert main(["check", f"{APPS}:unbounded", "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert (body["stop_seconds"], body["needed"], body["shutdown_timeout"]) == (None, None, None)
    assert body["overrun"] is False
    assert main(["check", f"{APPS}:unbounded"]) == 0
    out = capsys.readouterr().out
    assert "shutdown_timeout   no limit" in out
    assert "fits: shutdown_timeout sets no limit" in out


@pytest.mark.process
def test_check_imports_from_the_current_directory(tmp_path):
    """``svc:app`` is found in the current directory, as gunicorn and uvicorn do."""
    (tmp_path / "svc.py").write_text(
        "import lifecycle\n"
        "app = lifecycle.App('svc', shutdown_timeout=10, stop_timeout=3)\n"
        "app.add(object(), name='only', stop=lambda: None)\n"
    )
    done = cli("check", "svc:app", "--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["start_order"] == ["only"]


# -- graph ---------------------------------------------------------------------------------

MERMAID_NODE = re.compile(r'^    (n\d+)\["([^"]*)"\]$')
MERMAID_EDGE = re.compile(r"^    (n\d+) --> (n\d+)$")
DOT_STRING = r'"((?:[^"\\]|\\.)*)"'
DOT_NODE = re.compile(rf"^  {DOT_STRING};$")
DOT_EDGE = re.compile(rf"^  {DOT_STRING} -> {DOT_STRING};$")


def parse_mermaid(text: str) -> tuple[list[str], set[tuple[str, str]]]:
    """The nodes and edges of our Mermaid flowchart; fails on any line of another shape."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    labels: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()
    for line in lines[1:]:
        if line.startswith("    %%"):
            continue
        if m := MERMAID_NODE.match(line):
            labels[m[1]] = m[2].replace("#quot;", '"').replace("#amp;", "&")
        elif m := MERMAID_EDGE.match(line):
            edges.add((labels[m[1]], labels[m[2]]))
        else:
            pytest.fail(f"not a Mermaid node or edge: {line!r}")
    return list(labels.values()), edges


def parse_dot(text: str) -> tuple[str, list[str], set[tuple[str, str]]]:
    """The name, nodes and edges of our DOT digraph; fails on any line of another shape."""

    def unquote(s: str) -> str:
        return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), s)

    lines = text.splitlines()
    head = re.match(rf"^digraph {DOT_STRING} \{{$", lines[0])
    assert head is not None, lines[0]
    assert lines[-1] == "}"
    nodes: list[str] = []
    edges: set[tuple[str, str]] = set()
    for line in lines[1:-1]:
        if line.startswith("  //") or line == "  node [shape=box];":
            continue
        if m := DOT_EDGE.match(line):
            edges.add((unquote(m[1]), unquote(m[2])))
        elif m := DOT_NODE.match(line):
            nodes.append(unquote(m[1]))
        else:
            pytest.fail(f"not a DOT node or edge: {line!r}")
    return unquote(head[1]), nodes, edges


SHOP_EDGES = {("cache", "db"), ("api", "cache"), ("api", "db"), ("mailer", "db")}
ODD_EDGES = {("a\\pi", 'd"b'), ("x y", "a\\pi"), ("x y", 'd"b')}


@pytest.mark.process
@pytest.mark.parametrize(("attr", "edges"), [("app", SHOP_EDGES), ("odd_names", ODD_EDGES)])
def test_graph_mermaid_and_dot_have_every_edge(attr, edges):
    """Mermaid and DOT: one node per component, an edge A -> B for each A depends on B."""
    mermaid = cli("graph", f"{APPS}:{attr}", "--format", "mermaid")
    assert mermaid.returncode == 0, mermaid.stderr
    nodes, found = parse_mermaid(mermaid.stdout)
    assert found == edges
    assert {n for e in edges for n in e} <= set(nodes)
    dot = cli("graph", f"{APPS}:{attr}", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    name, nodes, found = parse_dot(dot.stdout)
    assert found == edges
    assert {n for e in edges for n in e} <= set(nodes)
    assert name == {"app": "shop", "odd_names": 'we"ird'}[attr]


@pytest.mark.process
def test_graph_text_and_its_errors():
    """Text: one line per component in start order; an invalid declaration exits 2."""
    done = cli("graph", f"{APPS}:app")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["db", "cache", "mailer", "api"]
    assert "api     depends on cache, db" in done.stdout
    bad = cli("graph", f"{APPS}:cycle", "--format", "dot")
    assert bad.returncode == 2
    assert "a -> b -> c -> a" in bad.stderr
    assert bad.stdout == ""


# -- version, help, specs ------------------------------------------------------------------


@pytest.mark.process
@LAUNCHERS
def test_version(launcher):
    """--version prints the installed package's version."""
    done = cli("--version", launcher=launcher)
    assert done.returncode == 0
    assert done.stdout.strip() == f"lifecycle {importlib.metadata.version('lifecycle')}"


REST = re.compile(r"`|:(?:func|class|meth|mod|attr|data):")


@pytest.mark.process
@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["graph"], ["exec"], ["demo"]])
def test_help_is_plain_text(command):
    """Every help screen is plain text: no reST markup (double backquotes, `x`, roles)."""
    done = cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: lifecycle")
    assert REST.search(done.stdout) is None, done.stdout
    if not command:
        for name in ("run", "check", "graph", "k8s", "exec", "demo"):
            assert re.search(rf"^    {name} ", done.stdout, re.M), name
        assert "demo-server" not in done.stdout


@pytest.mark.process
def test_no_command_says_what_to_type():
    """Without a command: exit 2 and the usage line."""
    done = cli()
    assert done.returncode == 2
    assert "usage: lifecycle" in done.stderr
    assert "COMMAND" in done.stderr


@pytest.fixture
def isolated_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_app may put the current directory on sys.path: undo that after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.mark.usefixtures("isolated_path")
@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("shop", ["MODULE:ATTRIBUTE", "'shop'", "e.g. myservice.main:app"]),
        ("shop:", ["MODULE:ATTRIBUTE"]),
        ("no_such_module_xyz:app", ["'no_such_module_xyz'", "current directory", "PYTHONPATH"]),
        (f"{APPS}:nosuch", ["no attribute 'nosuch'", APPS, "its Apps: app", f"e.g. {APPS}:app"]),
        (f"{APPS}:settings", ["is a dict ({'port': 8080}), not a lifecycle.App"]),
        (f"{APPS}:App_class", ["the class App itself, not an App"]),
        (f"{APPS}:needs_arguments", ["needs arguments (dsn)", "zero-argument"]),
        (f"{APPS}:returns_number", ["returned an int (42), not a lifecycle.App"]),
        (f"{APPS}:raises", ["raised RuntimeError: no configuration file found", "cli_apps.py:"]),
        (f"{APPS}:coroutine_factory", ["is an async function", "plain def"]),
        (f"{APPS}:app.nothing", [f"'{APPS}.app' ", "no attribute 'nothing'"]),
    ],
)
def test_load_app_errors_say_what_was_found_and_what_to_type(spec, fragments):
    """A bad MODULE:ATTR names the module, the attribute, and what is there instead."""
    with pytest.raises(LoadError) as caught:
        load_app(spec)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, lifecycle.ConfigError)
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.usefixtures("isolated_path")
def test_load_app_reports_a_missing_import_of_the_module(tmp_path, monkeypatch):
    """The module exists but imports something not installed: that name, and where."""
    (tmp_path / "svc_missing_dep.py").write_text("import not_installed_pkg_xyz\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LoadError, match="it imports 'not_installed_pkg_xyz'") as caught:
        load_app("svc_missing_dep:app")
    assert "svc_missing_dep.py:1" in str(caught.value)
    monkeypatch.delitem(sys.modules, "svc_missing_dep", raising=False)


@pytest.mark.usefixtures("isolated_path")
def test_load_app_passes_an_app_and_calls_a_factory():
    """An App is returned as is; a factory is called, once."""
    from tests.procs import cli_apps  # noqa: PLC0415

    assert load_app(f"{APPS}:app") is cli_apps.app
    made = load_app(f"{APPS}:make_app")
    assert isinstance(made, App)
    assert made.name == "made"


@pytest.mark.usefixtures("isolated_path")
def test_load_app_lets_a_declaration_error_through():
    """A factory whose declaration fails raises that ConfigError itself (exit 2 in check)."""
    with pytest.raises(lifecycle.DuplicateComponent):
        load_app(f"{APPS}:duplicate")


def test_k8s_is_handed_everything_after_the_word(monkeypatch):
    """``lifecycle k8s ARGS`` calls lifecycle._tools.k8s.main(ARGS) and returns its code."""
    seen: list[list[str]] = []
    fake = types.ModuleType("lifecycle._tools.k8s")

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lifecycle._tools.k8s", fake)
    import lifecycle._tools as tools  # noqa: PLC0415

    monkeypatch.setattr(tools, "k8s", fake, raising=False)
    assert main(["k8s", "lint", "deploy.yaml", "--app", "svc:app"]) == 7
    assert seen == [["lint", "deploy.yaml", "--app", "svc:app"]]


def test_k8s_missing_says_so(monkeypatch, capsys):
    """Without the Kubernetes tool installed, ``lifecycle k8s`` exits 2 saying so."""
    import lifecycle._tools as tools  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "lifecycle._tools.k8s", None)
    monkeypatch.delattr(tools, "k8s", raising=False)
    assert main(["k8s", "svc:app"]) == 2
    assert "lifecycle k8s: error: the Kubernetes tool is not part" in capsys.readouterr().err


@pytest.mark.process
def test_k8s_help_is_plain_text():
    """``lifecycle k8s --help`` (the Kubernetes tool's own parser) is plain text too."""
    done = cli("k8s", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: lifecycle k8s")
    assert REST.search(done.stdout) is None, done.stdout


# -- plan ----------------------------------------------------------------------------------


def declare(
    deps: dict[str, list[str]],
    timeouts: dict[str, float],
    both: set[str] = frozenset(),  # type: ignore[assignment]
    **options: Any,
) -> App:
    """An app of hook-only components: ``stop`` only, or ``run`` and ``stop`` for ``both``."""
    app = App("planned", **options)
    for name, on in deps.items():
        hooks: dict[str, Any] = {"stop": lambda: None}
        if name in both:
            hooks["run"] = lambda token: token.wait()
        app.add(object(), name=name, depends_on=on, stop_timeout=timeouts[name], **hooks)
    return app


@st.composite
def dags(draw: st.DrawFn) -> tuple[dict[str, list[str]], dict[str, float], set[str]]:
    """A random DAG (each node may depend on earlier ones), whole-second timeouts, some run+stop."""
    n = draw(st.integers(min_value=0, max_value=8))
    names = [f"c{i}" for i in range(n)]
    draw(st.randoms()).shuffle(names)  # registration order independent of the edges
    deps = {
        name: draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        for i, name in enumerate(names)
    }
    timeouts = {name: float(draw(st.integers(min_value=0, max_value=30))) for name in names}
    both = draw(st.sets(st.sampled_from(names))) if names else set()
    order = draw(st.permutations(names))
    return {name: deps[name] for name in order}, timeouts, both


def longest_chain(deps: dict[str, list[str]], weight: dict[str, float]) -> float:
    """Brute force: the heaviest chain over every path of the DAG."""

    def paths(node: str) -> Iterator[list[str]]:
        yield [node]
        for dep in deps[node]:
            for rest in paths(dep):
                yield [node, *rest]

    return max((sum(weight[n] for n in path) for node in deps for path in paths(node)), default=0.0)


@settings(max_examples=150, deadline=None)
@given(dags(), st.integers(min_value=0, max_value=10), st.integers(min_value=0, max_value=120))
def test_plan_critical_path_is_the_longest_chain(dag, drain, shutdown):
    """stop_seconds is the brute-force longest chain of stop budgets; the path is such a chain."""
    deps, timeouts, both = dag
    app = declare(deps, timeouts, both, drain_delay=drain, shutdown_timeout=shutdown)
    p = plan(app)
    weight = {n: timeouts[n] * (2 if n in both else 1) for n in deps}
    assert p.stop_seconds == longest_chain(deps, weight)
    assert sum(p.stop_budgets) == p.stop_seconds
    assert list(p.stop_budgets) == [weight[n] for n in p.stop_path]
    for later, earlier in itertools.pairwise(p.stop_path):
        assert earlier in deps[later]  # in stop order: a dependent, then its dependency
    assert (p.drain_min, p.drain_max) == (drain, drain)
    assert p.needed == drain + p.stop_seconds
    assert p.overrun == (p.needed > shutdown)


@settings(max_examples=150, deadline=None)
@given(dags())
def test_plan_waves_respect_the_dependencies(dag):
    """Start waves: deps in earlier waves, each at its earliest; stop waves: dependents first."""
    deps, timeouts, _ = dag
    p = plan(declare(deps, timeouts))
    assert sorted(p.start_order) == sorted(deps)
    position = {n: i for i, n in enumerate(p.start_order)}
    assert all(position[d] < position[n] for n in deps for d in deps[n])
    wave = {n: i for i, names in enumerate(p.waves) for n in names}
    assert sorted(wave) == sorted(deps)
    for n, on in deps.items():
        assert wave[n] == (max(wave[d] for d in on) + 1 if on else 0)
    stop_wave = {n: i for i, names in enumerate(p.stop_waves) for n in names}
    assert sorted(stop_wave) == sorted(deps)
    for n, on in deps.items():
        assert all(stop_wave[d] > stop_wave[n] for d in on)


def test_plan_of_an_empty_app():
    """No components: nothing to stop; the drain alone is needed."""
    p = plan(App("empty", drain_delay=3, shutdown_timeout=2))
    assert (p.start_order, p.waves, p.stop_path, p.stop_seconds) == ((), (), (), 0.0)
    assert (p.needed, p.overrun) == (3.0, True)


def test_plan_budget_boundary_fits():
    """needed == shutdown_timeout fits: only more than it overruns."""
    app = declare({"a": []}, {"a": 8.0}, drain_delay=2, shutdown_timeout=10)
    assert (plan(app).needed, plan(app).overrun) == (10.0, False)


def test_plan_reads_an_adaptive_drain_by_its_bounds():
    """An adaptive drain (`lifecycle.Drain`): its min and max are the plan's bounds."""
    drain = lifecycle.Drain(min=1.0, max=4.0, quiet=0.5)
    p = plan(declare({"a": []}, {"a": 5.0}, shutdown_timeout=8, drain_delay=drain))
    assert (p.drain_min, p.drain_max, p.needed, p.overrun) == (1.0, 4.0, 9.0, True)


@pytest.mark.parametrize(
    ("health", "expected"),
    [(None, None), (8081, ("127.0.0.1", 8081)), (("0.0.0.0", 9000), ("0.0.0.0", 9000))],
)
def test_plan_health_endpoint(health, expected):
    """The health endpoint's (host, port): a bare port listens on loopback."""
    assert plan(App("h", health=health)).health == expected


def test_plan_raises_the_declaration_error():
    """Cycles and unknown dependencies are raised as the ConfigError they are."""
    with pytest.raises(lifecycle.CycleError):
        plan(declare({"a": ["b"], "b": ["a"]}, {"a": 1.0, "b": 1.0}))
    with pytest.raises(lifecycle.UnknownDependency):
        plan(declare({"a": ["zz"]}, {"a": 1.0}))


def test_plan_as_dict_is_json_ready():
    """as_dict holds the fields and the derived needed/overrun."""
    p = plan(declare({"db": [], "api": ["db"]}, {"db": 2.0, "api": 3.0}, shutdown_timeout=4))
    body = json.loads(json.dumps(p.as_dict()))
    assert body["stop_path"] == ["api", "db"]
    assert (body["needed"], body["overrun"]) == (5.0, True)
    assert isinstance(p, Plan)
