"""`lifecycle.timeline`: the run of an app drawn from `App.report`, as SVG and as Mermaid.

The reports come from real runs on both runners (the `drive` fixture): a
clean stop, a stop that overruns, a failing start, an HTTP server cutting a
stuck request, an adaptive drain. The SVG is parsed with ElementTree and its
geometry checked against the report's times; one test renders it in
headless Chromium and reads the PNG back.
"""

from __future__ import annotations

import http.client
import math
import os
import re
import shutil
import struct
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lifecycle
import lifecycle.timeline
from lifecycle import App, ExitCode
from lifecycle._tools import timeline as impl
from tests.drive import BOUND, Drive

NS = "{http://www.w3.org/2000/svg}"
HOSTILE = [
    "<script>alert('x')</script>",
    "a & b \"quoted\" 'single'",
    "colon: hash# semi; pct%% end",
    "section evil",
    "]]> <!-- --> &amp;",
]


# -- reading the SVG -------------------------------------------------------------------


def parse(text: str) -> ET.Element:
    return ET.fromstring(text)


def classes(el: ET.Element) -> set[str]:
    return set((el.get("class") or "").split())


def find_all(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [el for el in root.iter(f"{NS}{tag}") if cls in classes(el)]


def rows(root: ET.Element) -> dict[str, ET.Element]:
    found = find_all(root, "g", "row")
    return {el.get("data-name", ""): el for el in found}


def row_names(root: ET.Element) -> list[str]:
    return [el.get("data-name", "") for el in find_all(root, "g", "row")]


def bar(row: ET.Element, kind: str) -> ET.Element | None:
    groups = [g for g in row.iter(f"{NS}g") if {"bar", kind} <= classes(g)]
    assert len(groups) <= 1
    return None if not groups else groups[0].find(f"{NS}rect")


def num(el: ET.Element | None, key: str) -> float:
    """A numeric attribute, which must be there."""
    assert el is not None
    value = el.get(key)
    assert value is not None, key
    return float(value)


def attr(el: ET.Element | None, key: str) -> str | None:
    assert el is not None
    return el.get(key)


def phase_rects(root: ET.Element) -> dict[str, ET.Element]:
    found = {}
    for g in find_all(root, "g", "phase"):
        rect = g.find(f"{NS}rect")
        assert rect is not None
        found[g.get("data-phase", "")] = rect
    return found


def title_of(root: ET.Element) -> str:
    (title,) = find_all(root, "text", "title")
    assert title.text is not None
    return title.text


def note(row: ET.Element) -> str | None:
    texts = [t for t in row.iter(f"{NS}text") if "note" in classes(t)]
    return texts[0].text if texts else None


def x_of(root: ET.Element, t: float) -> float:
    """Where time ``t`` is on the axis, from the axis' scale and breaks (an independent model)."""
    (axis,) = find_all(root, "g", "axis")
    x = num(axis, "data-origin-x")
    at = num(axis, "data-origin-t")
    scale = num(axis, "data-scale")
    width = num(axis, "data-break-width")
    breaks = sorted((num(g, "data-from"), num(g, "data-to")) for g in find_all(root, "g", "break"))
    for a, b in breaks:
        if t <= a:
            break
        if t < b:
            return x + (a - at) * scale + width * (t - a) / (b - a)
        x += (a - at) * scale + width
        at = b
    return x + (t - at) * scale


def check_bar(root: ET.Element, rect: ET.Element, begin: float, end: float) -> None:
    """The rect spans [begin, end] on the axis (1.5 px at least), within SVG rounding."""
    x0, x1 = x_of(root, begin), x_of(root, end)
    assert num(rect, "x") == pytest.approx(x0, abs=0.02)
    assert num(rect, "width") == pytest.approx(max(x1 - x0, 1.5), abs=0.02)


def check_component_bars(root: ET.Element, report: dict[str, Any]) -> None:
    for name, c in report["components"].items():
        row = rows(root)[name]
        for kind in ("start", "stop"):
            at, took = c[f"{kind}_at"], c[f"{kind}_seconds"]
            rect = bar(row, kind)
            if at is None:
                assert rect is None, (name, kind)
                continue
            assert rect is not None, (name, kind)
            check_bar(root, rect, at, at + took)


def no_external_references(text: str, root: ET.Element) -> None:
    forbidden_tags = {"script", "style", "foreignObject", "image", "a", "use", "iframe"}
    for el in root.iter():
        tag = el.tag.removeprefix(NS)
        assert tag not in forbidden_tags, tag
        for key, value in el.attrib.items():
            assert "href" not in key, key
            assert not key.startswith("on"), key
            assert "url(" not in value, value
            assert "http" not in value.lower(), value
    without_ns = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http" not in without_ns
    assert "<script" not in text.lower()


# -- components for real runs ---------------------------------------------------------


class Sleepy:
    """Start and stop take a known real time (the durations the chart draws)."""

    def __init__(self, start: float = 0.0, stop: float = 0.0) -> None:
        self.start_for, self.stop_for = start, stop

    def start(self) -> None:
        time.sleep(self.start_for)

    def stop(self) -> None:
        time.sleep(self.stop_for)


class Failing:
    def start(self) -> None:
        raise ValueError('boom <&> "quoted"')


class Ignoring:
    """A stop that ignores its token: it overruns its stop_timeout until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def stop(self) -> None:
        self.release.wait(BOUND)


@pytest.fixture
def released() -> Iterator[list[threading.Event]]:
    """Events set at teardown: nothing a test blocks is left blocked."""
    events: list[threading.Event] = []
    yield events
    for event in events:
        event.set()


def clean_run(drive: Drive) -> dict[str, Any]:
    app = App("shop", drain_delay=0.05, shutdown_timeout=2.0, stop_timeout=1.0)
    app.add(Sleepy(start=0.02, stop=0.06), name="db")
    app.add(Sleepy(start=0.01, stop=0.03), name="cache", depends_on=["db"])
    app.add(Sleepy(stop=0.09), name="api", depends_on=["cache"])
    drive.start(app)
    assert drive.stop("test") == ExitCode.OK
    return app.report()


# -- the SVG of real runs -------------------------------------------------------------


def test_a_clean_stop_draws_rows_in_start_order_with_bars_where_the_times_are(drive):
    report = clean_run(drive)
    text = lifecycle.timeline.svg(report)
    root = parse(text)
    assert row_names(root) == ["db", "cache", "api"]  # start order
    check_component_bars(root, report)
    for row in rows(root).values():
        assert note(row) is None
        assert not find_all(row, "g", "marked")
    # The three stop bars follow each other (api, cache, db): drawn to one scale,
    # their widths are in the ratio of their durations, without any model of the axis.
    stops = {n: c["stop_seconds"] for n, c in report["components"].items()}
    widths = {n: num(bar(r, "stop"), "width") for n, r in rows(root).items()}
    assert widths["api"] / widths["db"] == pytest.approx(stops["api"] / stops["db"], rel=0.02)
    assert widths["cache"] / widths["db"] == pytest.approx(stops["cache"] / stops["db"], rel=0.02)
    # Title: app, exit code, reason.
    title = title_of(root)
    assert title == "shop — exit 0 (OK) — test"
    no_external_references(text, root)


def test_the_budget_outline_the_waits_and_the_lines_of_the_shutdown(drive):
    report = clean_run(drive)
    root = parse(lifecycle.timeline.svg(report))
    comps, phases = report["components"], report["phases"]
    for name, row in rows(root).items():
        (budget,) = find_all(row, "rect", "budget")
        c = comps[name]
        assert c["stop_budget"] == 1.0
        check_bar(root, budget, c["stop_at"], c["stop_at"] + c["stop_budget"])
    # Who waited on whom: api's stop end -> cache's stop begin -> db's.
    waits = {(p.get("data-from"), p.get("data-to")): p for p in find_all(root, "path", "wait")}
    assert set(waits) == {("api", "cache"), ("cache", "db")}
    for (dependent, dependency), path in waits.items():
        numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", path.get("d", ""))]
        end = comps[dependent]["stop_at"] + comps[dependent]["stop_seconds"]
        assert numbers[0] == pytest.approx(x_of(root, end), abs=0.02)
        assert numbers[2] == pytest.approx(x_of(root, comps[dependency]["stop_at"]), abs=0.02)
    # Shutdown requested, drain end, deadline.
    (requested,) = find_all(root, "line", "requested")
    (drained,) = find_all(root, "line", "drain-end")
    (deadline,) = find_all(root, "line", "deadline")
    assert num(requested, "x1") == pytest.approx(x_of(root, phases["draining"]), abs=0.02)
    assert num(drained, "x1") == pytest.approx(x_of(root, phases["stopping"]), abs=0.02)
    at = phases["draining"] + report["shutdown_timeout"]
    assert num(deadline, "data-at") == pytest.approx(at, abs=1e-5)
    assert num(deadline, "x1") == pytest.approx(x_of(root, at), abs=0.02)
    assert deadline.get("stroke") == "#c00000"
    assert deadline.get("stroke-dasharray")
    last_stop = max(c["stop_at"] + c["stop_seconds"] for c in comps.values())
    assert num(deadline, "x1") > x_of(root, last_stop)
    # The phase band: starting, running, draining, stopping, each from its entry to the next.
    spans = phase_rects(root)
    assert list(spans) == ["starting", "running", "draining", "stopping"]
    draining = spans["draining"]
    x0, x1 = x_of(root, phases["draining"]), x_of(root, phases["stopping"])
    assert num(draining, "x") == pytest.approx(x0, abs=0.02)
    assert num(draining, "width") == pytest.approx(max(x1 - x0, 1.0), abs=0.02)
    # The whole axis is the plot's width: its pieces add up.
    (axis,) = find_all(root, "g", "axis")
    hi = max(at, *(t for t in phases.values()))
    assert x_of(root, hi) == pytest.approx(num(axis, "data-origin-x") + 760, abs=0.05)


def test_a_stop_that_overruns_is_red_labelled_and_exits_timeout(drive, released):
    app = App("slow", drain_delay=0, shutdown_timeout=BOUND, stop_timeout=0.2)
    stuck = app.add(Ignoring(), name="stuck")
    released.append(stuck.release)
    app.add(Sleepy(stop=0.01), name="front", depends_on=["stuck"])
    drive.start(app)
    assert drive.stop("test") == ExitCode.TIMEOUT
    report = app.report()
    assert report["components"]["stuck"]["timed_out"] == "stop"
    root = parse(lifecycle.timeline.svg(report))
    check_component_bars(root, report)
    row = rows(root)["stuck"]
    stop = bar(row, "stop")
    assert attr(stop, "fill") == "#e15759"
    assert attr(bar(row, "start"), "fill") == "#4e79a7"
    assert attr(bar(rows(root)["front"], "stop"), "fill") == "#59a14f"
    assert note(row) == "stop overran its 200ms budget"
    c = report["components"]["stuck"]
    (budget,) = find_all(row, "rect", "budget")
    check_bar(root, budget, c["stop_at"], c["stop_at"] + 0.2)
    assert c["stop_seconds"] >= 0.2
    title = title_of(root)
    assert "exit 3 (TIMEOUT)" in title
    text = lifecycle.timeline.mermaid(report)
    (line,) = [
        ln
        for ln in text.splitlines()
        if ln.strip().startswith("stop — stop overran its 200ms budget")
    ]
    assert ":crit, done, " in line


def test_a_failing_start_marks_its_start_bar_with_the_error(drive):
    app = App("broken", drain_delay=0, shutdown_timeout=BOUND, stop_timeout=1.0)
    app.add(Sleepy(), name="db")
    app.add(Failing(), name="bad", depends_on=["db"])
    with pytest.raises(lifecycle.StartupError):
        drive.start(app)
    assert drive.wait() == ExitCode.FAILED
    report = app.report()
    assert "draining" not in report["phases"]  # a rollback: straight to stopping
    text = lifecycle.timeline.svg(report)
    root = parse(text)
    check_component_bars(root, report)
    bad = rows(root)["bad"]
    assert attr(bar(bad, "start"), "fill") == "#e15759"
    assert bar(bad, "stop") is None  # never stopped: no stop bar, no budget
    assert not find_all(bad, "rect", "budget")
    assert note(bad) == 'failed: ValueError: boom <&> "quoted"'
    assert "boom &lt;&amp;&gt;" in text
    # Shutdown requested = the rollback's stopping; no drain end.
    (requested,) = find_all(root, "line", "requested")
    assert num(requested, "data-at") == pytest.approx(report["phases"]["stopping"], abs=1e-5)
    assert not find_all(root, "line", "drain-end")
    lines = lifecycle.timeline.mermaid(report).splitlines()
    assert any(
        ln.strip().startswith("start — failed\u2236 ValueError\u2236 boom") for ln in lines
    ), lines


class StuckHandler(BaseHTTPRequestHandler):
    entered = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:
        type(self).entered.set()
        type(self).release.wait(BOUND)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_http_stop_that_cuts_a_stuck_request_names_it(drive, released):
    class Handler(StuckHandler):
        entered = threading.Event()
        release = threading.Event()

    released.append(Handler.release)
    app = App("web", drain_delay=0, shutdown_timeout=BOUND, stop_timeout=0.5)
    srv = app.add(lifecycle.HTTPServer(Handler), name="api")
    drive.start(app)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=BOUND)
    try:
        conn.request("GET", "/slow?x=1")
        assert Handler.entered.wait(BOUND)
        assert drive.stop("test") == ExitCode.TIMEOUT
    finally:
        Handler.release.set()
        conn.close()
    report = app.report()
    c = report["components"]["api"]
    assert c["cut_count"] == 1
    assert c["cut"][0].startswith("GET /slow")
    root = parse(lifecycle.timeline.svg(report))
    check_component_bars(root, report)
    row = rows(root)["api"]
    assert attr(bar(row, "stop"), "fill") == "#e15759"
    label = note(row)
    assert label is not None
    assert label.startswith("cut 1: GET /slow")
    assert "…" not in label  # one cut: nothing more
    lines = lifecycle.timeline.mermaid(report).splitlines()
    (line,) = [ln for ln in lines if "cut 1\u2236 GET /slow" in ln]
    assert ":crit, done, " in line


def test_a_drain_is_drawn_from_the_request_to_the_stop(drive):
    app = App(
        "drained",
        drain_delay=lifecycle.Drain(min=0.1, max=2.0, quiet=0.05),
        shutdown_timeout=BOUND,
        stop_timeout=1.0,
    )
    app.add(lifecycle.HTTPServer(StuckHandler), name="http")
    drive.start(app)
    assert drive.stop("test") == ExitCode.OK
    report = app.report()
    assert isinstance(report["drain_delay"], dict)
    phases = report["phases"]
    assert phases["stopping"] - phases["draining"] >= 0.1
    root = parse(lifecycle.timeline.svg(report))
    check_component_bars(root, report)
    spans = phase_rects(root)
    draining = spans["draining"]
    check_bar(root, draining, phases["draining"], phases["stopping"])
    assert attr(draining, "fill") == "#ffd98a"
    (drained,) = find_all(root, "line", "drain-end")
    assert num(drained, "data-at") == pytest.approx(phases["stopping"], abs=1e-5)


def test_a_run_still_running_draws_what_exists(drive):
    app = App("live", drain_delay=0, shutdown_timeout=BOUND)
    app.add(Sleepy(), name="db")
    drive.start(app)
    try:
        report = app.report()
        root = parse(lifecycle.timeline.svg(report))
        row = rows(root)["db"]
        assert bar(row, "start") is not None
        assert bar(row, "stop") is None
        assert not find_all(root, "line", "deadline")  # no request yet: no deadline
        assert not find_all(root, "line", "requested")
        title = title_of(root)
        assert title == "live — running"
    finally:
        assert drive.stop("test") == ExitCode.OK


def test_an_app_that_never_ran_draws_an_empty_chart_with_a_note():
    app = App("idle")
    app.add(Sleepy(), name="db")
    app.add(Sleepy(), name="api", depends_on=["db"])
    report = app.report()
    root = parse(lifecycle.timeline.svg(report))
    assert sorted(row_names(root)) == ["api", "db"]
    assert not [g for g in root.iter(f"{NS}g") if "bar" in classes(g)]
    (empty,) = find_all(root, "text", "empty")
    assert "not run" in (empty.text or "")
    text = lifecycle.timeline.mermaid(report)
    assert "not started :milestone" in text
    assert impl.mermaid({"components": {}}).splitlines()[-1].endswith(":milestone, none, 0, 0")


def test_hostile_names_and_errors_are_escaped(drive):
    app = App("<b>app</b> & co", drain_delay=0, shutdown_timeout=BOUND, stop_timeout=1.0)
    previous: list[str] = []
    for name in HOSTILE:
        app.add(Sleepy(), name=name, depends_on=previous[-1:])
        previous.append(name)
    drive.start(app)
    assert drive.stop("test") == ExitCode.OK
    report = app.report()
    text = lifecycle.timeline.svg(report)
    root = parse(text)  # parses: nothing broke out of its text or attribute
    assert row_names(root) == HOSTILE
    for name, row in rows(root).items():
        (label,) = [t for t in row.iter(f"{NS}text") if "name" in classes(t)]
        assert label.text == name
    assert {(p.get("data-from"), p.get("data-to")) for p in find_all(root, "path", "wait")} == {
        (HOSTILE[i + 1], HOSTILE[i]) for i in range(len(HOSTILE) - 1)
    }
    no_external_references(text, root)
    title = title_of(root)
    assert title.startswith("<b>app</b> & co — exit 0")
    check_mermaid_syntax(lifecycle.timeline.mermaid(report), sections=len(HOSTILE))


def test_a_long_run_breaks_the_axis_and_keeps_the_shutdown_readable(drive):
    """Three hours between the start and the shutdown: an axis break, not a sliver."""
    report = clean_run(drive)
    hours = 3 * 3600.0
    began = report["phases"]["draining"]
    for phase, at in list(report["phases"].items()):
        if at >= began:
            report["phases"][phase] = at + hours
    for c in report["components"].values():
        c["stop_at"] += hours
    root = parse(lifecycle.timeline.svg(report))
    breaks = find_all(root, "g", "break")
    running = [
        g
        for g in breaks
        if num(g, "data-to") == pytest.approx(began + hours, abs=1e-5)
        and num(g, "data-from") <= report["phases"]["running"] + 1e-5
    ]
    assert len(running) == 1, [(g.get("data-from"), g.get("data-to")) for g in breaks]
    check_component_bars(root, report)
    # The shutdown is drawn to the same scale as the start: its bars are wide.
    for row in rows(root).values():
        assert num(bar(row, "stop"), "width") > 20
    labels = [t.text for t in root.iter(f"{NS}text") if t.text and t.text.startswith("+")]
    assert "+3h00m" in labels
    ticks = [t.text or "" for t in find_all(root, "text", "tick-label")]
    assert any(t.startswith("3h00m") for t in ticks), ticks


def test_no_break_when_nothing_is_idle():
    """Back-to-back bars: the axis is one linear piece over the whole run."""
    report = {
        "app": "a",
        "phases": {"starting": 0.0, "running": 1.0, "stopping": 1.0, "stopped": 3.0},
        "components": {
            "x": {"start_at": 0.0, "start_seconds": 1.0, "stop_at": 1.0, "stop_seconds": 2.0},
        },
    }
    root = parse(impl.svg(report))
    assert not find_all(root, "g", "break")
    (axis,) = find_all(root, "g", "axis")
    assert num(axis, "data-scale") == pytest.approx(760 / 3.0, rel=1e-5)
    row = rows(root)["x"]
    assert num(bar(row, "start"), "width") == pytest.approx(760 / 3.0, abs=0.02)
    assert num(bar(row, "stop"), "width") == pytest.approx(2 * 760 / 3.0, abs=0.02)
    ticks = [t.text or "" for t in find_all(root, "text", "tick-label")]
    assert ticks[:3] == ["0.0s", "0.5s", "1.0s"]


def test_many_cuts_are_counted_and_the_first_named():
    report = {
        "components": {
            "api": {
                "stop_at": 0.0,
                "stop_seconds": 1.0,
                "timed_out": "stop",
                "error": "DeadlineExceeded: ...",
                "cut": [f"GET /slow/{i} (12.3s)" for i in range(20)],
                "cut_count": 25,
            }
        }
    }
    root = parse(impl.svg(report))
    assert note(rows(root)["api"]) == "cut 25: GET /slow/0 (12.3s) …"


def test_the_picture_grows_with_its_rows():
    def one(n: int) -> ET.Element:
        comps = {f"c{i}": {"start_at": 0.0, "start_seconds": 0.1} for i in range(n)}
        return parse(impl.svg({"components": comps}))

    small, big = one(2), one(30)
    assert num(big, "height") - num(small, "height") == pytest.approx(28 * 26)
    assert big.get("viewBox") == f"0 0 {big.get('width')} {big.get('height')}"


# -- Mermaid ---------------------------------------------------------------------------

TASK = re.compile(
    r"^    (?P<name>[^:\n]+?) :(?P<tags>(?:(?:crit|done|active|milestone), )*)"
    r"(?P<id>[A-Za-z][A-Za-z0-9_]*), (?P<a>\d+), (?P<b>\d+)$"
)
KEYWORDS = ("title", "dateformat", "axisformat", "section", "todaymarker", "excludes", "click")


def check_mermaid_syntax(text: str, sections: int) -> list[re.Match[str]]:
    """Each line is one statement of a gantt chart; names carry no syntax."""
    lines = text.splitlines()
    assert lines[0] == "gantt"
    assert lines[2:5] == ["    dateFormat x", lines[3], "    todayMarker off"]
    assert lines[3].startswith("    axisFormat %")
    tasks = []
    ids = set()
    seen_sections = 0
    for line in lines[5:]:
        if line.startswith("    section "):
            seen_sections += 1
            rest = line.removeprefix("    section ")
            assert rest.strip()
            assert not set(rest) & set(":;#%<>"), line
            continue
        match = TASK.match(line)
        assert match, line
        name = match["name"]
        assert not set(name) & set(";#%<>"), line
        assert name.split()[0].lower() not in KEYWORDS, line
        assert int(match["a"]) <= int(match["b"]), line
        assert match["id"] not in ids
        ids.add(match["id"])
        tasks.append(match)
    assert seen_sections == sections + 1  # the app's section, then one per component
    title = lines[1]
    assert title.startswith("    title ")
    assert not set(title.removeprefix("    title ")) & set(";#%<>")
    return tasks


def test_mermaid_of_a_clean_stop_has_a_task_per_phase(drive):
    report = clean_run(drive)
    text = lifecycle.timeline.mermaid(report)
    tasks = check_mermaid_syntax(text, sections=3)
    by_id = {t["id"]: t for t in tasks}
    ms = lambda s: round(s * 1000)  # noqa: E731
    phases = report["phases"]
    assert [by_id[f"p{i}"]["name"] for i in range(4)] == [
        "starting",
        "running",
        "draining",
        "stopping",
    ]
    assert int(by_id["p2"]["a"]) == ms(phases["draining"])
    assert int(by_id["p2"]["b"]) == ms(phases["stopping"])
    assert by_id["req"]["tags"] == "milestone, "
    deadline = ms(phases["draining"] + report["shutdown_timeout"])
    assert (int(by_id["deadline"]["a"]), by_id["deadline"]["tags"]) == (
        deadline,
        "crit, milestone, ",
    )
    sections = [ln.removeprefix("    section ") for ln in text.splitlines() if "section" in ln]
    assert sections == ["app", "db", "cache", "api"]
    comps = report["components"]
    for i, name in enumerate(["db", "cache", "api"]):
        c = comps[name]
        for kind in ("start", "stop"):
            task = by_id[f"c{i}{kind}"]
            assert task["name"] == kind
            assert task["tags"] == "done, "
            assert int(task["a"]) == ms(c[f"{kind}_at"])
            assert int(task["b"]) == ms(c[f"{kind}_at"] + c[f"{kind}_seconds"])


def test_mermaid_names_cannot_break_the_syntax():
    names = [
        "a:b",
        "x#y",
        "semi;colon",
        "%% comment",
        "multi\nline\r\nname",
        "section sneaky",
        "title again",
        "",
        "   ",
        "back\\slash <b>",
        "tab\there",
        "%%{init: {'securityLevel': 'loose'}}%%",
        "#35; entity",
    ]
    comps = {
        n: {"start_at": 0.1 * i, "start_seconds": 0.1, "error": "E: bad;#%\nnext"}
        for i, n in enumerate(names)
    }
    report = {"app": "ap:p;#", "shutdown_reason": "why: #1;\n%%", "components": comps}
    text = impl.mermaid(report)
    check_mermaid_syntax(text, sections=len(names))
    assert "(unnamed)" in text


# -- validation and writing -------------------------------------------------------------


def test_a_report_that_is_not_one_is_refused_naming_what_is_wrong():
    for draw in (impl.svg, impl.mermaid):
        with pytest.raises(TypeError, match=r"must be a mapping.*not list"):
            draw([])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"no 'components'.*app\.report\(\)"):
            draw({"app": "x"})
        with pytest.raises(TypeError, match=r"'components' must be a mapping.*not list"):
            draw({"components": ["a"]})
        with pytest.raises(TypeError, match=r"component 'db' must be a mapping.*not NoneType"):
            draw({"components": {"db": None}})


def test_write_picks_the_format_by_suffix_and_replaces_atomically(tmp_path):
    report = App("w").report()
    svg_path, mmd_path = tmp_path / "out.svg", tmp_path / "out.mmd"
    svg_path.write_text("old")
    lifecycle.timeline.write(report, svg_path)
    lifecycle.timeline.write(report, str(mmd_path))
    lifecycle.timeline.write(report, tmp_path / "UPPER.SVG")
    assert svg_path.read_text(encoding="utf-8") == impl.svg(report)
    assert mmd_path.read_text(encoding="utf-8") == impl.mermaid(report)
    assert (tmp_path / "UPPER.SVG").read_text(encoding="utf-8").startswith("<svg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UPPER.SVG", "out.mmd", "out.svg"]
    with pytest.raises(ValueError, match=r"'\.png'.*'\.svg'.*'\.mmd'"):
        lifecycle.timeline.write(report, tmp_path / "out.png")
    with pytest.raises(ValueError, match=r"'\(none\)'.*'\.svg'.*'\.mmd'"):
        lifecycle.timeline.write(report, tmp_path / "noext")
    # A report that cannot be drawn leaves the old file whole, and no temporary file.
    with pytest.raises(ValueError, match="components"):
        lifecycle.timeline.write({"app": "x"}, svg_path)
    assert svg_path.read_text(encoding="utf-8") == impl.svg(report)
    # A folder that does not exist: OSError, nothing left behind.
    with pytest.raises(OSError, match="nowhere"):
        lifecycle.timeline.write(report, tmp_path / "nowhere" / "x.svg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UPPER.SVG", "out.mmd", "out.svg"]


def test_write_removes_its_temporary_file_when_the_rename_fails(tmp_path, monkeypatch):
    def failing(src: str, dst: str) -> None:
        raise OSError("disk said no")

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk said no"):
        impl.write({"components": {}}, tmp_path / "x.svg")
    assert list(tmp_path.iterdir()) == []


def test_the_public_module_re_exports_the_tools():
    assert lifecycle.timeline.svg is impl.svg
    assert lifecycle.timeline.mermaid is impl.mermaid
    assert lifecycle.timeline.write is impl.write
    assert lifecycle.timeline.__all__ == ["mermaid", "svg", "write"]
    for fn in (impl.svg, impl.mermaid, impl.write):
        assert fn.__doc__ is not None
        assert "Example::" in fn.__doc__


# -- any report ----------------------------------------------------------------------

TIMES = st.none() | st.floats() | st.integers(-(10**12), 10**12) | st.sampled_from(["1", True])
NAMES = st.text(max_size=12) | st.sampled_from([*HOSTILE, "\x00nul", "\ud800lone", "\ufffe", ""])


@st.composite
def reports(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(NAMES, max_size=6, unique=True))
    optional = {
        "state": st.text(max_size=8),
        "error": st.none() | st.text(max_size=20),
        "timed_out": st.sampled_from([None, "start", "stop", "other"]),
        "start_seconds": TIMES,
        "stop_seconds": TIMES,
        "start_at": TIMES,
        "stop_at": TIMES,
        "depends_on": st.lists(st.sampled_from(names) if names else NAMES, max_size=3),
        "stop_budget": TIMES,
        "cut": st.lists(st.text(max_size=30), max_size=3),
        "cut_count": st.none() | st.integers(-3, 100),
    }
    components = {n: draw(st.fixed_dictionaries({}, optional=optional)) for n in names}
    phase_names = st.sampled_from(["starting", "running", "draining", "stopping", "stopped"])
    top = {
        "app": NAMES,
        "state": st.text(max_size=8),
        "exit_code": st.none() | st.integers(-5, 300),
        "shutdown_reason": st.none() | NAMES,
        "shutdown_timeout": TIMES,
        "phases": st.dictionaries(phase_names | st.text(max_size=5), TIMES, max_size=6),
    }
    report = draw(st.fixed_dictionaries({}, optional=top))
    report["components"] = components
    return report


@settings(max_examples=200, deadline=None)
@given(reports())
def test_any_report_draws_without_raising(report):
    text = impl.svg(report)
    root = parse(text)
    assert len(find_all(root, "g", "row")) == len(report["components"])
    for el in root.iter():
        for key in ("x", "y", "width", "height", "x1", "x2", "y1", "y2"):
            if key in el.attrib:
                assert math.isfinite(float(el.attrib[key])), (key, el.attrib)
        if "width" in el.attrib:
            assert float(el.attrib["width"]) >= 0, el.attrib
    assert "<script" not in text
    text.encode("utf-8")  # no lone surrogate left: write() can always write it
    chart = impl.mermaid(report)
    chart.encode("utf-8")
    lines = chart.splitlines()
    assert lines[0] == "gantt"
    assert all(line.startswith("    ") for line in lines[1:])
    sections = sum(line.startswith("    section ") for line in lines)
    assert sections == len(report["components"]) + 1


# -- rendered in a real browser --------------------------------------------------------


def read_png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, channels, rows of pixel bytes) of an 8-bit non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert (depth, interlace) == (8, 0), header
    channels = {2: 3, 6: 4, 0: 1, 4: 2}[colour]
    raw = zlib.decompress(idat)
    stride = width * channels
    rows_out: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows_out.append(bytes(line))
        previous = line
    return width, height, channels, rows_out


def colour_counts(png: bytes, wanted: dict[str, str]) -> tuple[int, dict[str, int]]:
    """How many pixels are not white, and how many have each wanted colour (±4)."""
    _, _, channels, pixel_rows = read_png(png)
    targets = {k: tuple(int(v[i : i + 2], 16) for i in (1, 3, 5)) for k, v in wanted.items()}
    counts = dict.fromkeys(wanted, 0)
    ink = 0
    for line in pixel_rows:
        for i in range(0, len(line), channels):
            px = tuple(line[i : i + 3])
            if px != (255, 255, 255):
                ink += 1
            for k, target in targets.items():
                if all(abs(p - t) <= 4 for p, t in zip(px, target, strict=True)):
                    counts[k] += 1
    return ink, counts


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.process
@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("LIFECYCLE_REQUIRE_CHROMIUM"),
    reason="chromium is not installed (set LIFECYCLE_REQUIRE_CHROMIUM=1 to require it)",
)
def test_the_svg_renders_in_headless_chromium(released, tmp_path, log_events):
    """The picture of a real run (one runner: the drawing does not depend on it), rendered."""
    assert CHROMIUM is not None, "LIFECYCLE_REQUIRE_CHROMIUM is set but chromium is not on PATH"
    drive = Drive("thread")
    app = App("rendered", drain_delay=0.05, shutdown_timeout=1.0, stop_timeout=0.15)
    stuck = app.add(Ignoring(), name="stuck <&>")
    released.append(stuck.release)
    app.add(Sleepy(start=0.05, stop=0.05), name="db")
    app.add(Sleepy(stop=0.08), name="api", depends_on=["db"])
    try:
        drive.start(app)
        assert drive.stop("test") == ExitCode.TIMEOUT
    finally:
        drive.close()
    picture = tmp_path / "timeline.svg"
    lifecycle.timeline.write(app.report(), picture)
    root = parse(picture.read_text(encoding="utf-8"))
    width, height = math.ceil(num(root, "width")), math.ceil(num(root, "height"))
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            f"--window-size={width},{height}",
            picture.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert shot.exists(), done.stderr[-2000:]
    ink, counts = colour_counts(
        shot.read_bytes(),
        {"start": "#4e79a7", "stop": "#59a14f", "bad": "#e15759", "draining": "#ffd98a"},
    )
    assert ink > width * height // 50, "the screenshot is (nearly) blank"
    assert all(n > 20 for n in counts.values()), counts


def test_the_mermaid_example_in_the_docs_is_valid_output():
    """docs/timeline.md shows a chart this module wrote: it keeps to the syntax checked here."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "timeline.md").read_text()
    (block,) = re.findall(r"^```mermaid\n(.*?)^```", page, re.S | re.M)
    tasks = check_mermaid_syntax(block, sections=3)
    assert any(t["tags"] == "crit, done, " for t in tasks)


def test_a_never_run_app_is_titled_by_its_state_and_a_missing_folder_is_named(tmp_path):
    app = lifecycle.App("idle")
    assert lifecycle.timeline.mermaid(app.report()).splitlines()[1] == "    title idle — new"
    target = tmp_path / "nowhere" / "t.svg"
    with pytest.raises(FileNotFoundError, match=r"the folder of .*t\.svg' does not exist"):
        lifecycle.timeline.write(app.report(), target)
