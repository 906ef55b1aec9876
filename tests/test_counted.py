"""benchmarks.counted: its arithmetic, its errors, and every row's request path (no valgrind)."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import counted

SUMMARY = """\
desc: I1 cache: 32768 B, 64 B, 8-way associative
cmd: python -m benchmarks.counted --child wsgi --with --count 200
events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw Bc Bcm Bi Bim
fn=main
1 5 0 0 1 0 0 0 0 0 0 0 0 0
summary: 1000 10 2 400 30 3 200 20 1 150 40 60 8
"""


def test_the_summary_line_is_read_by_the_event_names():
    totals = counted.read_summary(SUMMARY)
    assert totals["Ir"] == 1000
    assert totals["D1mw"] == 20
    assert totals["Bim"] == 8


@pytest.mark.parametrize("text", ["", "events: Ir\n", "summary: 1 2\n", "summary: 1\nevents: Ir\n"])
def test_an_incomplete_output_is_refused_with_what_is_missing(text: str):
    with pytest.raises(ValueError, match="no 'events:' and 'summary:' lines"):
        counted.read_summary(text)


def test_a_summary_shorter_than_its_events_counts_the_rest_as_zero():
    assert counted.read_summary("events: Ir Bcm\nsummary: 7\n") == {"Ir": 7, "Bcm": 0}


def test_per_request_is_the_difference_of_two_runs_over_the_requests_between():
    small = {"Ir": 1000, "I1mr": 1, "D1mr": 2, "D1mw": 3, "DLmr": 1, "Bcm": 4, "Bim": 0}
    large = {"Ir": 3000, "I1mr": 3, "D1mr": 8, "D1mw": 5, "DLmr": 3, "Bcm": 10, "Bim": 2}
    per = counted.per_request(small, large, 100)
    assert per == counted.Counts(instr=20.0, l1_misses=0.1, ll_misses=0.02, mispredicts=0.08)
    # KCachegrind's estimate: instructions + 10 x (L1 misses + mispredicts) + 100 x LL misses
    assert per.cycles == pytest.approx(20 + 10 * (0.1 + 0.08) + 100 * 0.02)


def _result(row: counted.Row, without: float, with_: float) -> counted.Result:
    return counted.Result(
        row,
        counted.Counts(without, 0, 0, 0),
        counted.Counts(with_, 0, 0, 0),
        base_us=40.0,
    )


def test_added_microseconds_are_the_added_cycles_at_the_rate_of_the_side_without():
    row = counted.ROWS["wsgi"]
    result = _result(row, 200_000, 205_000)  # 2.5 % more, of a 40 us request
    assert result.added_us == pytest.approx(1.0)
    assert result.ok  # at the budget, not over it
    assert not _result(row, 200_000, 205_100).ok


def test_a_ratio_row_keeps_its_share_of_the_capacity():
    row = counted.ROWS["uvicorn-asgi"]
    assert _result(row, 98, 100).ok
    assert not _result(row, 97, 100).ok


@pytest.mark.parametrize("text", ["200", "400,200", "0,10", "a,b", "1,2,3"])
def test_bad_run_sizes_are_refused_naming_the_form(text: str):
    with pytest.raises(argparse.ArgumentTypeError, match="smaller first, as 200,400"):
        counted._requests(text)


def test_an_unknown_row_is_refused_naming_the_rows(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        counted.main(["--rows", "wsgi,nginx"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown row(s) nginx" in err
    assert "uvicorn-asgi" in err


def test_without_valgrind_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setattr("benchmarks.counted.shutil.which", lambda name: None)
    assert counted.main(["--rows", "wsgi"]) == 2
    assert "apt-get install valgrind" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(counted.ROWS))
@pytest.mark.parametrize("with_lifecycle", [False, True], ids=["without", "with"])
def test_every_side_serves_its_requests(name: str, with_lifecycle: bool):
    """What runs under valgrind runs here: each side serves requests and times them."""
    seconds = counted.ROWS[name].side(with_lifecycle, 5)
    assert 0 < seconds < 5


@pytest.mark.parametrize("text", ["", "a", "0,-1", "1,,2", "4294967296"])
def test_bad_seeds_are_refused_naming_the_form(text: str):
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated, as 0,1,2"):
        counted._seeds(text)


def test_the_row_printed_is_the_median_seeds():
    row = counted.ROWS["uvicorn-asgi"]
    per_seed = [_result(row, 97, 100), _result(row, 99, 100), _result(row, 98, 100)]
    assert counted.median_result(per_seed) is per_seed[2]
    text = counted.table([per_seed], (200, 400), [0, 1, 2])
    assert "0.980" in text
    assert "PASS" in text
