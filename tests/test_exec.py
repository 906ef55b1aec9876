"""``lifecycle exec``: a real supervisor process, a real child, real signals."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lifecycle._runtime.exec import NOT_EXECUTABLE, NOT_FOUND, exit_status
from tests.e2e.haproxy import free_port

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
BOUND = 15.0  # seconds any one wait in these tests may take
TARGET = [sys.executable, "-m", "tests.procs.exec_target"]


def until(what: str, check: Callable[[], object], timeout: float = BOUND) -> object:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Exec:
    """``python -m lifecycle exec OPTIONS -- exec_target RECORD ARGS`` in its own session."""

    def __init__(self, tmp: Path, options: list[str], target: list[str]) -> None:
        self.record = tmp / "record"
        self.stderr_path = tmp / "stderr"
        argv = [sys.executable, "-m", "lifecycle", "exec", *options, "--", *target]
        argv = [a.replace("{record}", str(self.record)) for a in argv]
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.DEVNULL, stderr=stderr, start_new_session=True
            )

    def lines(self, what: str) -> list[list[str]]:
        try:
            text = self.record.read_text()
        except FileNotFoundError:
            return []
        return [line.split() for line in text.splitlines() if line.startswith(what + " ")]

    def wait_line(self, what: str, count: int = 1) -> list[list[str]]:
        found = until(
            f"{count} {what!r} line(s) in the record\n{self.stderr()}",
            lambda: len(self.lines(what)) >= count and self.lines(what),
        )
        assert isinstance(found, list)
        return found

    def signals(self) -> list[str]:
        return [parts[2] for parts in self.lines("signal")]

    @property
    def child_pid(self) -> int:
        return int(self.wait_line("started")[0][2])

    def kill(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def exit_code(self, timeout: float = BOUND) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"lifecycle exec did not exit within {timeout} s\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def run_exec(tmp_path: Path) -> Iterator[Callable[..., Exec]]:
    started: list[Exec] = []

    def spawn(*target_args: str, options: tuple[str, ...] = ()) -> Exec:
        e = Exec(tmp_path, list(options), [*TARGET, "{record}", *target_args])
        started.append(e)
        return e

    yield spawn
    for e in started:
        e.close()


def readyz(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def test_exit_status_reads_like_a_shell():
    """An exit code stays itself; death by signal N reads 128 + N."""
    assert exit_status(3 << 8) == 3
    assert exit_status(int(signal.SIGKILL)) == 128 + signal.SIGKILL


@pytest.mark.parametrize("code", [0, 5])
def test_child_exiting_by_itself_ends_exec_at_once_with_its_code(run_exec, code):
    """A child that exits on its own: exec exits with its code, without the 60 s drain delay."""
    e = run_exec("--exit", str(code), options=("--drain-delay", "60", "--stop-timeout", "60"))
    assert e.exit_code(timeout=10) == code
    # The App's summary says its own code (0); a line says the exit code is the child's.
    assert ("exit code is the child's" in e.stderr()) == (code != 0), e.stderr()


def test_child_killed_by_a_signal_exits_128_plus_n(run_exec):
    """A child killed by SIGKILL makes exec exit 137, as a shell reports it."""
    e = run_exec("--wait")
    os.kill(e.child_pid, signal.SIGKILL)
    assert e.exit_code() == 128 + signal.SIGKILL


def test_sigterm_is_passed_on_and_the_childs_code_returned(run_exec):
    """SIGTERM reaches the child; the child's exit code after it is exec's."""
    e = run_exec("--wait", "--term-exit", "7")
    e.wait_line("started")
    e.kill(signal.SIGTERM)
    assert e.exit_code() == 7
    assert e.signals() == ["SIGTERM"]


def test_sigint_stops_like_sigterm(run_exec):
    """SIGINT starts the same graceful stop: the child gets SIGTERM, not SIGINT."""
    e = run_exec("--wait")
    e.wait_line("started")
    e.kill(signal.SIGINT)
    assert e.exit_code() == 0
    assert e.signals() == ["SIGTERM"]


@pytest.mark.realtime
def test_readiness_is_503_before_the_child_gets_sigterm(run_exec):
    """/readyz turns 503 at SIGTERM; the child keeps running the drain delay, then gets SIGTERM."""
    port = free_port()
    drain = 1.5
    e = run_exec("--wait", options=("--drain-delay", str(drain), "--health", f"127.0.0.1:{port}"))
    e.wait_line("started")
    until("/readyz 200", lambda: readyz(port) == 200)
    sent = time.monotonic()
    e.kill(signal.SIGTERM)
    until("/readyz 503", lambda: readyz(port) == 503)
    seen_503 = time.monotonic()
    assert e.signals() == []  # the child has not been told yet
    got_term = float(e.wait_line("signal")[0][1])
    assert seen_503 < got_term
    assert got_term - sent >= drain - 0.05
    assert e.exit_code() == 0


def test_ready_port_holds_readiness_until_the_child_listens(run_exec, tmp_path):
    """With --ready-port, /readyz is 503 while the child runs but does not listen, then 200."""
    health, app_port = free_port(), free_port()
    trigger = tmp_path / "listen-now"
    e = run_exec(
        "--wait",
        "--listen-after",
        str(trigger),
        str(app_port),
        options=("--health", f"127.0.0.1:{health}", "--ready-port", str(app_port)),
    )
    e.wait_line("started")
    until("the health endpoint", lambda: readyz(health) is not None)
    assert readyz(health) == 503  # running, not listening yet
    trigger.touch()
    e.wait_line("listening")
    until("/readyz 200 once the child listens", lambda: readyz(health) == 200)
    e.kill(signal.SIGTERM)
    assert e.exit_code() == 0


def test_a_health_port_in_use_exits_2_naming_it(run_exec):
    """A --health port already taken: exit 2 (CONFIG) with a message naming the port."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        e = run_exec("--wait", options=("--health", f"127.0.0.1:{port}"))
        assert e.exit_code() == 2
    assert f"127.0.0.1:{port}" in e.stderr()
    assert e.lines("started") == []  # the child was never started


def test_other_signals_are_forwarded_to_the_child(run_exec):
    """SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH reach the child and stop nothing; SIGQUIT too."""
    e = run_exec("--wait")
    e.wait_line("started")
    sent = [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH]
    for n, signum in enumerate(sent, start=1):
        e.kill(signum)
        e.wait_line("signal", n)  # one at a time: signals of one kind coalesce
    assert e.proc.poll() is None
    e.kill(signal.SIGQUIT)  # the child exits 0 on it: exec follows at once
    assert e.exit_code() == 0
    assert e.signals() == [s.name for s in sent] + ["SIGQUIT"]


@pytest.mark.skipif(not hasattr(signal, "SIGRTMIN"), reason="no real-time signals here")
def test_signals_whose_default_would_end_exec_are_forwarded_and_it_lives_on(run_exec):
    """SIGALRM, SIGXCPU, a real-time signal: each would end exec (its child orphaned); forwarded."""
    e = run_exec("--wait")
    e.wait_line("started")
    sent = [signal.SIGALRM, signal.SIGXCPU, signal.SIGRTMIN + 5]
    for n, signum in enumerate(sent, start=1):
        e.kill(signum)
        e.wait_line("signal", n)
    assert e.proc.poll() is None
    e.kill(signal.SIGTERM)
    assert e.exit_code() == 0
    assert e.signals() == ["SIGALRM", "SIGXCPU", "SIGRTMIN+5", "SIGTERM"]


@pytest.mark.skipif(not hasattr(signal, "SIGPWR"), reason="no SIGPWR here")
@pytest.mark.parametrize("signum", ["SIGPWR", "SIGRTMIN+3"])
def test_the_signals_inits_are_asked_to_shut_down_with_stop_like_sigterm(run_exec, signum):
    """SIGPWR (lxc-stop) and SIGRTMIN+3 (systemd's halt): the stop, the child gets SIGTERM."""
    number = signal.SIGPWR if signum == "SIGPWR" else signal.SIGRTMIN + 3
    e = run_exec("--wait", "--term-exit", "7")
    e.wait_line("started")
    e.kill(number)
    assert e.exit_code() == 7
    assert e.signals() == ["SIGTERM"]


def test_child_ignoring_sigterm_is_killed_after_the_stop_timeout(run_exec):
    """A child that ignores SIGTERM is SIGKILLed after --stop-timeout; exec exits 3 (TIMEOUT)."""
    e = run_exec("--wait", "--ignore-term", options=("--stop-timeout", "0.5"))
    pid = e.child_pid
    e.kill(signal.SIGTERM)
    began = time.monotonic()
    assert e.exit_code() == 3
    assert time.monotonic() - began < 0.5 + 5
    assert e.signals() == ["SIGTERM"]
    assert not Path(f"/proc/{pid}").exists()
    assert "did not exit within 0.5 s of SIGTERM" in e.stderr()


@pytest.mark.realtime
def test_a_second_sigterm_after_the_grace_forces_the_exit(run_exec):
    """A repeat of SIGTERM more than 1 s after the first kills the child: exit 128 + 15."""
    e = run_exec("--wait", "--ignore-term", options=("--stop-timeout", "60"))
    pid = e.child_pid
    e.kill(signal.SIGTERM)
    first = float(e.wait_line("signal")[0][1])
    until("the 1 s grace to pass", lambda: time.monotonic() > first + 1.2)
    e.kill(signal.SIGTERM)
    assert e.exit_code() == 128 + signal.SIGTERM
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreaper is Linux's")
def test_orphans_are_reparented_to_exec_and_reaped(run_exec):
    """An orphaned grandchild is reparented to exec (a subreaper) and reaped when it exits."""
    e = run_exec("--wait", "--orphan")
    orphan = e.wait_line("orphan")[0]
    pid, parent = int(orphan[2]), int(orphan[3])
    assert parent == e.proc.pid

    # A zombie keeps its /proc entry until its parent reaps it.
    until(
        f"orphan {pid} to be reaped (not left a zombie)", lambda: not Path(f"/proc/{pid}").exists()
    )
    e.kill(signal.SIGTERM)
    assert e.exit_code() == 0


def test_missing_command_exits_127_naming_it(tmp_path):
    """A command that does not exist: exit 127 and a message naming it, as a shell."""
    proc = subprocess.run(
        [sys.executable, "-m", "lifecycle", "exec", "--", "no-such-command-lc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    assert proc.returncode == NOT_FOUND
    assert "no-such-command-lc: command not found" in proc.stderr


def test_command_that_cannot_be_executed_exits_126(tmp_path):
    """A file without the execute bit: exit 126 and a message saying how to fix it."""
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    proc = subprocess.run(
        [sys.executable, "-m", "lifecycle", "exec", "--", str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    assert proc.returncode == NOT_EXECUTABLE
    assert "chmod +x" in proc.stderr


def _exec_file(
    tmp_path: Path, text: str, *options: str, on_path: bool = False
) -> subprocess.CompletedProcess[str]:
    """``lifecycle exec OPTIONS -- SCRIPT`` of an executable file holding ``text``.

    ``on_path``: the script is named as a command found through PATH, not by its path.
    """
    script = tmp_path / "lc-script"
    script.write_text(text)
    script.chmod(0o755)
    command = script.name if on_path else str(script)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "lifecycle", "exec", *options, "--", command],
        cwd=ROOT,
        env=env if on_path else None,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )


@pytest.mark.parametrize(("quiet", "on_path"), [((), False), (("-q",), False), (("-q",), True)])
def test_a_script_whose_interpreter_is_missing_exits_127_naming_it(tmp_path, quiet, on_path):
    """The file exists, its #! interpreter does not: one line naming the interpreter, 127.

    Also for a script found through PATH, not given as a path: the interpreter
    is named, not the script.
    """
    proc = _exec_file(tmp_path, "#!/nonexistent/lc-interp -x\necho hi\n", *quiet, on_path=on_path)
    assert proc.returncode == NOT_FOUND
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "its #! line names, /nonexistent/lc-interp, is not found" in line
    assert "command not found" not in line


@pytest.mark.parametrize("quiet", [(), ("-q",)])
def test_a_file_of_no_executable_format_exits_126_in_one_line(tmp_path, quiet):
    """Executable bit set, no #! line and no binary format (ENOEXEC): one line, 126."""
    proc = _exec_file(tmp_path, "echo hi\n", *quiet)
    assert proc.returncode == NOT_EXECUTABLE
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "cannot execute" in line


def test_exec_without_a_command_is_a_usage_error():
    """``lifecycle exec`` with nothing after ``--`` exits 2 and says what is missing."""
    proc = subprocess.run(
        [sys.executable, "-m", "lifecycle", "exec", "--"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    assert proc.returncode == 2
    assert "exec needs a command" in proc.stderr


def test_back_to_back_signals_are_each_acted_on(run_exec):
    """Pairs of signals sent back to back are all forwarded, each pair within the bound (the
    kernel promises no order for signals pending together); then USR1 and SIGTERM back to
    back: the child gets USR1 first (forwarded before the stop begins), then SIGTERM."""
    e = run_exec("--wait")
    e.wait_line("started")
    pairs = 20
    for n in range(1, pairs + 1):
        e.kill(signal.SIGHUP)
        e.kill(signal.SIGUSR1)
        e.wait_line("signal", 2 * n)  # a signal not acted on would stall here
    got = e.signals()
    assert [sorted(got[i : i + 2]) for i in range(0, 2 * pairs, 2)] == [
        ["SIGHUP", "SIGUSR1"]
    ] * pairs
    e.kill(signal.SIGUSR1)
    e.kill(signal.SIGTERM)
    assert e.exit_code() == 0
    assert e.signals()[2 * pairs :] == ["SIGUSR1", "SIGTERM"]


@pytest.mark.parametrize("option", ["--drain-delay", "--stop-timeout"])
def test_a_huge_number_of_seconds_is_refused_up_front(option):
    """1e10 s (past what a thread can wait) is a usage error naming the option and the limit."""
    proc = subprocess.run(
        [sys.executable, "-m", "lifecycle", "exec", option, "1e10", "--", "true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    assert proc.returncode == 2
    assert option in proc.stderr
    assert "at most 31536000" in proc.stderr


def _outcome_of_an_early_sigterm(tmp_path: Path, delay: float, prefix: list[str]) -> None:
    record = tmp_path / f"record-{delay}"
    argv = [*prefix, sys.executable, "-m", "lifecycle", "exec", "-q", "--"]
    argv += [*TARGET, str(record), "--wait"]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        target = proc.pid
        if prefix:  # under unshare: the namespace's PID 1 is unshare's child
            found = until(
                "lifecycle as PID 1",
                lambda: Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split(),
            )
            assert isinstance(found, list)
            target = int(found[0])
            # From the moment lifecycle's command line runs (it blocks SIGTERM first):
            # before that, PID 1's default disposition drops the signal, whoever runs.
            until("lifecycle's command line to begin", lambda: _blocks_sigterm(target))
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            pass  # spin: the point is the timing, a sleep's granularity is too coarse
        os.kill(target, signal.SIGTERM)
        code = proc.wait(BOUND)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    text = record.read_text() if record.exists() else ""
    started = [line.split() for line in text.splitlines() if line.startswith("started ")]
    signals = [line.split()[2] for line in text.splitlines() if line.startswith("signal ")]
    if started and not prefix:  # (in a PID namespace, its processes end with its PID 1)
        assert not _alive(int(started[0][2]))
    if started:
        assert (code, signals) == (0, ["SIGTERM"]), (delay, code, signals)
    else:
        # Before lifecycle's own code runs, SIGTERM's default action ends it (-15);
        # once it runs, a SIGTERM before the child exists exits 143 without starting it.
        assert code in (-signal.SIGTERM, 128 + signal.SIGTERM), (delay, code)


def _blocks_sigterm(pid: int) -> bool:
    if b"lifecycle" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        return False  # not yet exec'd: unshare blocks SIGTERM while it prepares
    status = Path(f"/proc/{pid}/status").read_text()
    blocked = int(next(x for x in status.splitlines() if x.startswith("SigBlk:")).split()[1], 16)
    return bool(blocked & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8])
def test_a_sigterm_right_after_the_start_stops_it(tmp_path, delay):
    """SIGTERM at any moment of exec's own start: it stops -- the child not started (143), or
    started, told and exited (0) -- within the bound; never a child left running to its end."""
    _outcome_of_an_early_sigterm(tmp_path, delay, [])


@pytest.mark.skipif(
    subprocess.run(
        ["unshare", "-pf", "--mount-proc", "true"], capture_output=True, check=False
    ).returncode
    != 0
    if sys.platform.startswith("linux") and shutil.which("unshare")
    else True,
    reason="needs unshare -pf (a PID namespace)",
)
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1, 0.3])
def test_as_pid_1_an_early_sigterm_is_not_dropped(tmp_path, delay):
    """As PID 1 (which the kernel spares signals without a handler), a SIGTERM from the moment
    lifecycle's command line runs on stops exec: never dropped while the child runs on."""
    _outcome_of_an_early_sigterm(tmp_path, delay, ["unshare", "-pf", "--mount-proc"])


def test_the_rest_of_the_group_is_ended_when_the_child_exits_by_itself(run_exec, tmp_path):
    """A child that exits 4 leaving a process in its group: exec ends that process
    (SIGTERM, SIGKILL if it ignores it) before exiting 4."""
    code = (
        "import os, signal, sys, time\n"
        "if os.fork() == 0:\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"    open({str(tmp_path / 'gc')!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(30); os._exit(0)\n"
        f"while not os.path.exists({str(tmp_path / 'gc')!r}): time.sleep(0.01)\n"
        "sys.exit(4)\n"
    )
    e = Exec(tmp_path, ["--stop-timeout", "1"], [sys.executable, "-c", code])
    try:
        assert e.exit_code() == 4
        pid = int((tmp_path / "gc").read_text())
        assert not _alive(pid), "a process of the child's group outlived exec"
    finally:
        e.close()
        _kill_left(tmp_path / "gc")


def test_the_rest_of_the_group_is_ended_after_the_stop(run_exec, tmp_path):
    """SIGTERM: the child exits, a process of its group that ignores SIGTERM is killed too."""
    code = (
        "import os, signal, sys, time\n"
        "if os.fork() == 0:\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"    open({str(tmp_path / 'gc')!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(30); os._exit(0)\n"
        "time.sleep(30)\n"
    )
    e = Exec(tmp_path, ["--stop-timeout", "1"], [sys.executable, "-c", code])
    try:
        until("the grandchild", (tmp_path / "gc").exists)
        until("its pid", (tmp_path / "gc").read_text)
        e.kill(signal.SIGTERM)
        assert e.exit_code() == 128 + signal.SIGTERM  # the child died of it
        assert not _alive(int((tmp_path / "gc").read_text()))
    finally:
        e.close()
        _kill_left(tmp_path / "gc")


def _kill_left(pid_file: Path) -> None:
    if pid_file.exists() and pid_file.read_text() and _alive(int(pid_file.read_text())):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_timeout_0_lets_a_child_that_exits_at_once_exit(run_exec):
    """--stop-timeout 0 and a child that exits at once on SIGTERM: its code (0), not a kill (3)."""
    e = run_exec("--wait", options=("--stop-timeout", "0"))
    e.wait_line("started")
    e.kill(signal.SIGTERM)
    assert e.exit_code() == 0
    assert e.signals() == ["SIGTERM"]


def test_a_stopped_child_is_continued_after_the_stop_signal(run_exec):
    """A child stopped (SIGSTOP) gets SIGCONT after the stop signal, so it can act on it."""
    e = run_exec("--wait", options=("--stop-timeout", "10"))
    pid = e.child_pid
    os.kill(pid, signal.SIGSTOP)
    until("the child to be stopped", lambda: _state(pid) == "T")
    e.kill(signal.SIGTERM)
    assert e.exit_code() == 0  # exited by its handler, not killed at the timeout (3)
    assert e.signals() == ["SIGTERM"]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize(("given", "ok"), [("15", True), ("9", True), ("STOP", False)])
def test_stop_signal_by_number_and_refused_job_control(run_exec, given, ok):
    """--stop-signal takes a number too; STOP (which ends no process) is refused naming why."""
    if not ok:
        proc = subprocess.run(
            [sys.executable, "-m", "lifecycle", "exec", "--stop-signal", given, "--", "true"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert proc.returncode == 2
        assert "does not make a process exit" in proc.stderr
        return
    e = run_exec("--wait", options=("--stop-signal", given))
    e.wait_line("started")
    e.kill(signal.SIGTERM)
    expected = 0 if given == "15" else 128 + signal.SIGKILL
    assert e.exit_code() == expected


def test_a_health_port_in_use_names_the_option(run_exec):
    """The message for a taken --health port says to choose another with --health."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        e = run_exec("--wait", options=("--health", f"127.0.0.1:{port}"))
        assert e.exit_code() == 2
    assert "--health" in e.stderr()
    assert "App(health" not in e.stderr()


def test_quiet_missing_command_is_one_line():
    """-q and a command that does not exist: one line on stderr, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "lifecycle", "exec", "-q", "--", "no-such-command-lc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    assert proc.returncode == NOT_FOUND
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
