"""``python -m benchmarks``: the report, the picture, and running a benchmark bounded."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from benchmarks import __main__ as report_main
from benchmarks.__main__ import (
    BENCHES,
    SOAK_BEGIN,
    SOAK_END,
    Bench,
    Outcome,
    lost_svg,
    report,
    run_bench,
)

SVG = "{http://www.w3.org/2000/svg}"
INFO = {
    "cpu": "Test CPU",
    "cores": "2",
    "memory": "24.0 GiB",
    "os": "Linux",
    "python": "3.11.7",
    "commit": "abc1234",
}


def roll(kind: str, run: int, lost: int, sent: int = 3400) -> dict[str, Any]:
    return {
        "kind": kind,
        "run": run,
        "sent": sent,
        "lost": lost,
        "failures": "",
        "exit_codes": [0, 0],
        "max_shutdown_seconds": 2.06,
        "roll_seconds": 9.1,
    }


ROLLS = [
    roll("naive", 1, 96),
    roll("naive", 2, 206),
    roll("plain uvicorn", 1, 158),
    roll("lifecycle http", 1, 0),
    roll("lifecycle http", 2, 0),
]


def bars(svg: str) -> dict[str, ET.Element]:
    """The chart's bars by the kind their tooltip names."""
    root = ET.fromstring(svg)
    found = {}
    for rect in root.iter(f"{SVG}rect"):
        title = rect.find(f"{SVG}title")
        if title is not None and title.text:
            found[title.text.split(":")[0]] = rect
    return found


def test_the_picture_has_one_bar_per_kind_proportional_to_the_mean_loss():
    svg = lost_svg(ROLLS, "2 replicas")
    found = bars(svg)
    assert list(found) == ["naive", "plain uvicorn", "lifecycle http"]
    naive, uvicorn = (float(found[k].get("width", "0")) for k in ("naive", "plain uvicorn"))
    assert naive / uvicorn == pytest.approx(151 / 158, rel=0.01)  # means 151 and 158
    assert float(found["lifecycle http"].get("width", "-1")) == 0.0  # lost nothing: no bar
    assert found["naive"].get("fill") == "#c62828"  # a baseline
    assert found["lifecycle http"].get("fill") == "#2e7d32"  # lifecycle's
    assert "96, 206 of ~3400" in svg
    assert "0, 0 of ~3400" in svg


def test_the_picture_is_self_contained_and_escapes_names():
    hostile = [roll('<script>alert("x")</script> & co', 1, 3)]
    svg = lost_svg(hostile)
    root = ET.fromstring(svg)  # parses: every name escaped
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert '<script>alert("x")</script> & co' in texts
    assert "<script" not in svg.replace("&lt;script", "")
    for needle in ("href", "url(", "http://", "https://", "<style", "@import"):
        assert needle not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_a_picture_of_no_completed_roll_says_so():
    svg = lost_svg([{"kind": "naive", "run": 1, "error": "haproxy died"}])
    ET.fromstring(svg)
    assert "no completed rolls" in svg
    assert bars(svg) == {}


def outcome(name: str = "health", output: str = "a table", **kw: Any) -> Outcome:
    bench = next(b for b in BENCHES if b.name == name)
    fields: dict[str, Any] = {
        "argv": bench.full,
        "seconds": 2.0,
        "status": "ok",
        "output": output,
    }
    fields.update(kw)
    return Outcome(bench, **fields)


def write(outcomes: list[Outcome], **kw: Any) -> str:
    return report(
        outcomes,
        info=INFO,
        began="2026-12-02 17:00 UTC",
        load_before="0.50 0.40 0.30",
        load_after="1.50 1.00 0.50",
        smoke=False,
        **kw,
    )


def test_the_report_names_the_machine_each_command_and_each_table():
    text = write([outcome(), outcome("rolling", "rolling table", rolls=tuple(ROLLS))])
    assert "| CPU | Test CPU |" in text
    load = "| load average before / after (1, 5, 15 min) | 0.50 0.40 0.30 / 1.50 1.00 0.50 |"
    assert load in text
    assert "commit `abc1234`" in text
    assert "Reproduce: `python -m benchmarks.health`." in text
    assert "Reproduce: `python -m benchmarks.rolling --runs 3`." in text
    assert "```text\na table\n```" in text
    assert "![Requests lost per roll, per server kind](lost-per-roll.svg)" in text
    assert "| naive | 96, 206 | 3400 | 0,0; 0,0 |" in text
    assert "| **lifecycle http** | **0, 0** | 3400 | 0,0; 0,0 |" in text


def test_a_failed_roll_is_listed_with_its_error():
    rolls = (*ROLLS, {"kind": "plain gunicorn", "run": 1, "error": "not ready in 20 s"})
    text = write([outcome("rolling", "t", rolls=rolls)])
    assert "| plain gunicorn | roll 1 failed: not ready in 20 s | | |" in text


def test_a_commands_arguments_are_quoted_for_the_shell():
    bench = Bench("rolling", "t", "b", full=("--kinds", "naive,lifecycle http"))
    assert Outcome(bench, bench.full, 1.0, "ok", "").command == (
        "python -m benchmarks.rolling --kinds 'naive,lifecycle http'"
    )


def test_the_soak_section_is_kept_until_a_soak_replaces_it():
    first = write([outcome()])
    assert "Not run yet: `python -m benchmarks --soak 600`" in first
    soaked = Outcome(
        Bench("soak", "t", "b"), ("600",), 612.0, "ok", "   1  lc_http  2400  0  2.06  0,0  9.0"
    )
    second = write([outcome()], previous=first, soak=soaked)
    assert "Run 2026-12-02 17:00 UTC with `LIFECYCLE_SOAK_SECONDS=600" in second
    assert "lc_http  2400  0" in second
    third = write([outcome()], previous=second)  # no soak this time: the last one stays
    section = third.split(SOAK_BEGIN, 1)[1].split(SOAK_END, 1)[0]
    assert "lc_http  2400  0" in section
    assert "(612 s, ok)" in section


def test_a_benchmark_whose_tool_is_missing_is_skipped_naming_the_package(monkeypatch):
    monkeypatch.setattr("benchmarks.__main__.shutil.which", lambda name: None)
    bench = next(b for b in BENCHES if b.name == "redis_streams")
    done = run_bench(bench, smoke=True)
    assert done.status == "skipped: redis-server not installed (apt-get install -y redis-server)"
    assert not done.failed


@pytest.mark.process
def test_a_benchmark_past_its_timeout_is_ended_and_reported():
    """A full run bounded at 1 s: the child (and what it started) ends; status says so."""
    bench = Bench("runners", "t", "b", timeout=1.0)
    done = run_bench(bench, smoke=False)
    assert done.status == "timed out after 1 s"
    assert done.failed
    assert done.seconds < 1.0 + 10 + 30


@pytest.mark.process
def test_the_command_runs_a_benchmark_and_writes_the_report(tmp_path: Path):
    out = tmp_path / "RESULTS.md"
    out.write_text(f"old\n{SOAK_BEGIN}\nRun long ago: 0 lost.\n{SOAK_END}\n", encoding="utf-8")
    assert report_main.main(["--only", "health", "--smoke", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Benchmark results")
    assert "Written by `python -m benchmarks --smoke`" in text
    assert "### health: probe latency under slow clients" in text
    assert "/livez with 200 slow clients" in text  # the benchmark's own table
    assert "Run long ago: 0 lost." in text  # the soak's last result, kept
    assert not (tmp_path / "lost-per-roll.svg").exists()  # no rolls, no picture


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--only", "nosuch"], "unknown benchmark(s) nosuch; known: aiohttp"),
        (["--soak", "0"], "--soak must be a number of seconds in (0, 3600]"),
        (["--out", "/nonexistent/dir/R.md"], "the folder /nonexistent/dir does not exist"),
    ],
)
def test_bad_arguments_are_refused_naming_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_main.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_benchmark_script_of_the_folder_is_in_the_report():
    """A new benchmark script cannot be left out of ``python -m benchmarks``."""
    scripts = {
        p.stem
        for p in Path(report_main.__file__).parent.glob("*.py")
        if not p.stem.startswith("_")
    }
    assert scripts == {b.name for b in BENCHES}


def test_a_benchmark_left_out_of_the_smoke_run_is_reported_as_skipped():
    bench = next(b for b in BENCHES if b.smoke is None)
    done = run_bench(bench, smoke=True)
    assert done.status == "skipped in --smoke: run it in full"
    assert not done.failed
