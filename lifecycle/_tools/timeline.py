"""The shutdown timeline: an app's run, from `App.report`, drawn as a Gantt chart.

`svg` draws a self-contained SVG picture (no script, no font, no URL: it
opens in any browser, offline, and can be attached to an incident report);
`mermaid` writes the same chart as Mermaid ``gantt`` text (for a Markdown
page that renders Mermaid); `write` picks one by the file's suffix.
``lifecycle run --timeline PATH`` calls `write` once the app stopped.

What the SVG shows, top to bottom:

* a title line: the app, its exit code and the shutdown reason;
* a band with the app's phases (starting, running, draining, stopping);
* one row per component, in start order (by ``start_at``, then name): its
  start bar, its stop bar, and behind the stop bar, as a faint outline, its
  stop budget (the longest its stop may take; none when unbounded). A bar
  that overran its timeout, failed or cut work is red and labelled (``cut 3:
  GET /slow (12.3s) …``); a failure colours the last bar the component has;
* thin grey connectors from a component's stop end to the stop begin of each
  component it depends on: who waited on whom (dependencies stop after their
  dependents);
* vertical lines: shutdown requested, drain end, and the shutdown deadline
  (the request plus ``shutdown_timeout``) as a red dashed line;
* a time axis in seconds since the run began, and a legend.

The axis break: a period in which nothing happens (no bar, no phase change,
no deadline) longer than a fifth of the time still drawn to scale is drawn
as a fixed-width break (a zigzag, labelled with its real length) instead, at
most three times. An app that ran for hours between its start and its
shutdown, or a deadline far after the last stop, thus leaves the start and
the shutdown readable; inside each unbroken stretch, x is proportional to
time. The Mermaid chart has no breaks (Mermaid has none).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

__all__ = ["mermaid", "svg", "write"]

# -- the report, read defensively ----------------------------------------------------

_MAX_TIME: Final = 1e9  # seconds (31 years): beyond that a time is taken as garbage
_PHASES: Final = ("starting", "running", "draining", "stopping")
_FINAL_PHASES: Final = ("stopped", "failed")
_EXIT_NAMES: Final = {0: "OK", 1: "FAILED", 2: "CONFIG", 3: "TIMEOUT"}


def _time(value: object) -> float | None:
    """A time or duration from the report, or None when absent or not a usable number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number) or abs(number) > _MAX_TIME:
        return None
    return number


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


@attrs.frozen
class _Bar:
    begin: float
    end: float
    open: bool  # still in progress when the report was taken: no duration yet


@attrs.frozen
class _Component:
    name: str
    start: _Bar | None
    stop: _Bar | None
    budget: float | None
    budget_end: float | None
    start_timeout: float | None
    error: str | None
    timed_out: str | None
    cut: tuple[str, ...]
    cut_count: int
    depends_on: tuple[str, ...]
    state: str

    @property
    def start_marked(self) -> bool:
        """The start bar is drawn as a failure (overran, or the component failed before a stop)."""
        if self.timed_out == "start":
            return True
        return self.error is not None and self.stop is None and self.timed_out is None

    @property
    def stop_marked(self) -> bool:
        """The stop bar is drawn as a failure (overran, cut work, or failed once stopping)."""
        if self.stop is None:
            return False
        if self.timed_out == "stop" or self.cut_count:
            return True
        return self.error is not None and self.timed_out is None

    def note(self) -> str | None:
        """The label of the marked bar: what was cut, what overran, what failed."""
        if self.cut_count:
            first = self.cut[0] if self.cut else "?"
            more = " …" if self.cut_count > 1 else ""
            return f"cut {self.cut_count}: {first}{more}"
        if self.timed_out == "stop":
            if self.budget is None:
                return "stop overran its budget"
            return f"stop overran its {_duration(self.budget)} budget"
        if self.timed_out == "start":
            if self.start_timeout is None:
                return "start timed out"
            return f"start timed out after {_duration(self.start_timeout)}"
        if self.error is not None:
            return f"failed: {self.error}"
        return None


@attrs.frozen
class _Report:
    app: str
    state: str
    exit_code: int | None
    reason: str | None
    shutdown_timeout: float | None
    phases: dict[str, float]
    components: tuple[_Component, ...]

    @property
    def shutdown_begin(self) -> float | None:
        """When the shutdown was requested: the drain began, or (no drain phase) the stop."""
        for phase in ("draining", "stopping"):
            if phase in self.phases:
                return self.phases[phase]
        return None

    @property
    def drain_end(self) -> float | None:
        if "draining" in self.phases and "stopping" in self.phases:
            return self.phases["stopping"]
        return None

    @property
    def deadline(self) -> float | None:
        begin = self.shutdown_begin
        if begin is None or self.shutdown_timeout is None:
            return None
        return _time(begin + self.shutdown_timeout)

    def title(self) -> str:
        code = self.state if self.exit_code is None else f"exit {self.exit_code}"
        if self.exit_code in _EXIT_NAMES:
            code += f" ({_EXIT_NAMES[self.exit_code]})"
        reason = f" — {self.reason}" if self.reason else ""
        return f"{self.app} — {code}{reason}"

    def subtitle(self) -> str:
        timeout = "unbounded" if self.shutdown_timeout is None else _duration(self.shutdown_timeout)
        return f"state {self.state}; shutdown_timeout {timeout}; times in seconds since the start"


def _bar(begin: object, length: object) -> _Bar | None:
    at = _time(begin)
    if at is None:
        return None
    took = _time(length)
    if took is None:
        return _Bar(at, at, open=True)
    return _Bar(at, at + max(0.0, took), open=False)


def _parse(report: object) -> _Report:
    """Check the report's shape (a mapping with ``components``) and read it leniently.

    Raises:
        TypeError: the report, its ``components`` or an entry of it is not a mapping.
        ValueError: the report has no ``components``.
    """
    if not isinstance(report, Mapping):
        raise TypeError(
            f"timeline: the report must be a mapping, as App.report() returns, "
            f"not {type(report).__name__}"
        )
    if "components" not in report:
        raise ValueError(
            "timeline: the report has no 'components'; pass app.report() "
            "(a dict with 'app', 'phases', 'components', ...)"
        )
    raw = report["components"]
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"timeline: the report's 'components' must be a mapping of name to component, "
            f"not {type(raw).__name__}"
        )
    components = []
    for key, entry in raw.items():
        name = _text(key)
        if not isinstance(entry, Mapping):
            raise TypeError(
                f"timeline: the report's component {name!r} must be a mapping, "
                f"not {type(entry).__name__}"
            )
        stop = _bar(entry.get("stop_at"), entry.get("stop_seconds"))
        budget = _time(entry.get("stop_budget"))
        cut = entry.get("cut")
        cut_lines = tuple(_text(c) for c in cut) if isinstance(cut, list | tuple) else ()
        count = entry.get("cut_count")
        cut_count = count if isinstance(count, int) and not isinstance(count, bool) else 0
        cut_count = max(cut_count, len(cut_lines))
        depends = entry.get("depends_on")
        error = entry.get("error")
        timed_out = entry.get("timed_out")
        components.append(
            _Component(
                name=name,
                start=_bar(entry.get("start_at"), entry.get("start_seconds")),
                stop=stop,
                budget=None if budget is None else max(0.0, budget),
                start_timeout=_time(entry.get("start_timeout")),
                budget_end=None
                if stop is None or budget is None
                else _time(stop.begin + max(0.0, budget)),
                error=None if error is None else _text(error),
                timed_out=timed_out if timed_out in ("start", "stop") else None,
                cut=cut_lines,
                cut_count=cut_count,
                depends_on=tuple(_text(d) for d in depends)
                if isinstance(depends, list | tuple)
                else (),
                state=_text(entry.get("state", "?")),
            )
        )
    components.sort(key=lambda c: (c.start is None, c.start.begin if c.start else 0.0, c.name))
    phases_raw = report.get("phases")
    phases: dict[str, float] = {}
    if isinstance(phases_raw, Mapping):
        for key, value in phases_raw.items():
            at = _time(value)
            if at is not None:
                phases[_text(key)] = at
    code = report.get("exit_code")
    reason = report.get("shutdown_reason")
    timeout = report.get("shutdown_timeout")
    return _Report(
        app=_text(report.get("app", "app")),
        state=_text(report.get("state", "?")),
        exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        reason=None if reason is None else _text(reason),
        shutdown_timeout=None if timeout is None else _time(timeout),
        phases=phases,
        components=tuple(components),
    )


def _phase_spans(report: _Report, end: float) -> list[tuple[str, float, float]]:
    """(phase, begin, end) of each app phase the run reached; the last one ends at ``end``."""
    times = sorted(report.phases.items(), key=lambda kv: (kv[1], _order(kv[0])))
    spans = []
    for i, (phase, at) in enumerate(times):
        if phase not in _PHASES:
            continue
        later = [t for _, t in times[i + 1 :]]
        spans.append((phase, at, later[0] if later else max(at, end)))
    return spans


def _order(phase: str) -> int:
    order = (*_PHASES, *_FINAL_PHASES)
    return order.index(phase) if phase in order else len(order)


# -- text ------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    """``850ms``, ``1.25s``, ``3m12s``, ``2h05m``."""
    seconds = abs(seconds)
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:.3g}ms" if ms < 99.5 else f"{ms:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m{rest:02d}s"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"{hours}h{rest:02d}m"


def _tick_label(t: float, step: float) -> str:
    decimals = min(6, max(0, -math.floor(math.log10(step)))) if step > 0 else 0
    sign = "-" if t < 0 else ""
    t = abs(t)
    if t < 60:
        return f"{sign}{t:.{decimals}f}s"
    width = 3 + decimals if decimals else 2
    minutes, secs = divmod(t, 60)
    if minutes < 60:
        return f"{sign}{int(minutes)}m{secs:0{width}.{decimals}f}s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{sign}{hours}h{minutes:02d}m{secs:0{width}.{decimals}f}s"


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# XML 1.0 allows tab, newline, carriage return and these ranges; anything else
# (NUL, other controls, lone surrogates, U+FFFE) is replaced.
_NOT_XML: Final = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    """``text`` made safe as XML character data or a double-quoted attribute value."""
    text = _NOT_XML.sub("\ufffd", text)
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


# -- the time axis ---------------------------------------------------------------------

_PLOT_WIDTH: Final = 760.0
_BREAK_WIDTH: Final = 28.0
_BREAK_SHARE: Final = 0.2
_MAX_BREAKS: Final = 3
_MIN_TICK_GAP: Final = 84.0


@attrs.frozen
class _Piece:
    t0: float
    t1: float
    x0: float
    x1: float
    broken: bool


class _Axis:
    """Time to x: linear pieces, with fixed-width breaks over long empty periods."""

    def __init__(self, spans: Iterable[tuple[float, float]], left: float, width: float) -> None:
        spans = sorted((min(a, b), max(a, b)) for a, b in spans)
        lo = min([0.0, *(a for a, _ in spans)])
        hi = max([lo, *(b for _, b in spans)])
        if hi - lo <= 0:
            hi = lo + 1.0
        self.lo, self.hi = lo, hi
        merged: list[list[float]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        gaps = sorted(
            ((merged[i][1], merged[i + 1][0]) for i in range(len(merged) - 1)),
            key=lambda g: g[1] - g[0],
            reverse=True,
        )
        breaks: list[tuple[float, float]] = []
        linear = hi - lo
        for a, b in gaps[:_MAX_BREAKS]:
            if b - a <= _BREAK_SHARE * linear or linear - (b - a) <= 0:
                break
            breaks.append((a, b))
            linear -= b - a
        breaks.sort()
        # Two breaks on either side of a mere moment (a budget's end): one break.
        joined: list[tuple[float, float]] = []
        for a, b in breaks:
            if joined and a <= joined[-1][1]:
                joined[-1] = (joined[-1][0], b)
            else:
                joined.append((a, b))
        breaks = joined
        scale_px = width - _BREAK_WIDTH * len(breaks)
        self.scale = scale_px / linear  # px per second in the linear pieces
        pieces: list[_Piece] = []
        t, x = lo, left
        for a, b in breaks:
            pieces.append(_Piece(t, a, x, x + (a - t) * self.scale, broken=False))
            x = pieces[-1].x1
            pieces.append(_Piece(a, b, x, x + _BREAK_WIDTH, broken=True))
            t, x = b, x + _BREAK_WIDTH
        pieces.append(_Piece(t, hi, x, left + width, broken=False))
        self.pieces = pieces

    def x(self, t: float) -> float:
        for piece in self.pieces:
            if t <= piece.t1:
                if t <= piece.t0 or piece.t1 <= piece.t0:
                    return piece.x0
                return piece.x0 + (t - piece.t0) / (piece.t1 - piece.t0) * (piece.x1 - piece.x0)
        return self.pieces[-1].x1

    def ticks(self) -> list[tuple[float, str]]:
        """(x, label) of each tick: round values in each linear piece, none crowded."""
        step = _nice_step(_MIN_TICK_GAP / self.scale)
        ticks: list[tuple[float, str]] = []
        for piece in self.pieces:
            if piece.broken:
                continue
            k = math.ceil(piece.t0 / step - 1e-9)
            for _ in range(1000):
                t = k * step
                if t > piece.t1 + 1e-9 * max(1.0, abs(t)):
                    break
                x = self.x(t)
                if not ticks or x - ticks[-1][0] >= _MIN_TICK_GAP * 0.75:
                    ticks.append((x, _tick_label(t, step)))
                k += 1
        return ticks


def _nice_step(least: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``least`` seconds."""
    if not math.isfinite(least) or least <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(least))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if factor * power >= least * (1 - 1e-12):
            return factor * power
    return 10.0 * power  # pragma: no cover - the loop always returns


# -- the SVG ---------------------------------------------------------------------------

_FONT: Final = "font-family:sans-serif"
_COLOURS: Final = {
    "start": "#4e79a7",
    "stop": "#59a14f",
    "bad": "#e15759",
    "budget": "#59a14f",
    "wait": "#8c8c8c",
    "deadline": "#c00000",
    "line": "#444444",
    "starting": "#a0cbe8",
    "running": "#d4ecc8",
    "draining": "#ffd98a",
    "stopping": "#ffb07a",
    "break": "#eeeeee",
    "text": "#222222",
    "faint": "#e6e6e6",
}
_ROW: Final = 26.0
_BAR: Final = 14.0
_MARGIN: Final = 16.0
_CHAR: Final = 6.8  # px per character of 12px sans-serif, a fair guess without metrics


class _Canvas:
    """SVG elements as text; every attribute value and text escaped."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, tag: str, text: str | None = None, /, **attributes: object) -> None:
        body = _attributes(attributes)
        if text is None:
            self.parts.append(f"<{tag} {body}/>")
        else:
            self.parts.append(f"<{tag} {body}>{_xml(text)}</{tag}>")

    def open(self, tag: str, /, **attributes: object) -> None:
        self.parts.append(f"<{tag} {_attributes(attributes)}>")

    def close(self, tag: str) -> None:
        self.parts.append(f"</{tag}>")

    def title(self, text: str) -> None:
        self.parts.append(f"<title>{_xml(text)}</title>")


def _attributes(attributes: Mapping[str, object]) -> str:
    """``class_="x", stroke_width=1`` as ``class="x" stroke-width="1"``."""
    return " ".join(
        f'{k.rstrip("_").replace("_", "-")}="{_xml(_attr(v))}"' for k, v in attributes.items()
    )


def _attr(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def _text_attrs(size: float = 12, colour: str = _COLOURS["text"], **more: str) -> dict[str, str]:
    style = f"{_FONT};font-size:{size:g}px;fill:{colour}"
    return {"style": style, **more}


def svg(report: Mapping[str, Any]) -> str:
    """The run as a self-contained SVG Gantt chart (see the module's description).

    Args:
        report: ``app.report()`` (or one read back from its JSON); times
            that are None or missing are left out of the picture.

    Returns:
        The SVG document as text (UTF-8 when written; no external reference).

    Raises:
        TypeError, ValueError: ``report`` is not a mapping with ``components``.

    Example::

        picture = lifecycle.timeline.svg(app.report())
        Path("shutdown.svg").write_text(picture, encoding="utf-8")
    """
    return _Picture(_parse(report)).draw()


def _moments(r: _Report) -> list[tuple[float, float]]:
    """What the axis must show: every bar, budget end, phase change and the deadline."""
    moments: list[tuple[float, float]] = []
    for c in r.components:
        moments.extend((bar.begin, bar.end) for bar in (c.start, c.stop) if bar is not None)
        if c.budget_end is not None:
            moments.append((c.budget_end, c.budget_end))
    moments.extend((t, t) for t in r.phases.values())
    if "draining" in r.phases and r.drain_end is not None:
        moments.append((r.phases["draining"], r.drain_end))
    if r.deadline is not None:
        moments.append((r.deadline, r.deadline))
    return moments


class _Picture:
    """The layout of one report's SVG, and its drawing, part by part."""

    def __init__(self, r: _Report) -> None:
        self.r = r
        rows = r.components
        longest = max([len(r.app) // 2, *(min(len(c.name), 40) for c in rows), 6])
        label_width = min(max(longest * _CHAR + 20, 90.0), 300.0)
        self.left = _MARGIN + label_width
        self.width = self.left + _PLOT_WIDTH + _MARGIN + 12
        self.band_y = 70.0
        self.rows_y = self.band_y + 26
        self.rows_bottom = self.rows_y + _ROW * max(1, len(rows))
        moments = _moments(r)
        self.ran = bool(moments)
        self.axis = _Axis(moments, self.left, _PLOT_WIDTH)
        self.end = self.axis.hi
        self.legend_rows = _legend_layout(_legend(), self.width - 2 * _MARGIN)
        self.legend_y = self.rows_bottom + 48
        self.height = self.legend_y + 18 * len(self.legend_rows) + _MARGIN
        self.centre: dict[str, float] = {}
        for i, c in enumerate(rows):
            self.centre.setdefault(c.name, self.rows_y + i * _ROW + _ROW / 2)
        self.out = _Canvas()

    def draw(self) -> str:
        out, r = self.out, self.r
        size = f'width="{self.width:.0f}" height="{self.height:.0f}"'
        out.parts.append(
            f'<svg xmlns="http://www.w3.org/2000/svg" {size} '
            f'viewBox="0 0 {self.width:.0f} {self.height:.0f}" role="img">'
        )
        out.title(f"Timeline of {r.title()}")
        out.add(
            "rect", x=0, y=0, width=f"{self.width:.0f}", height=f"{self.height:.0f}", fill="#ffffff"
        )
        out.add(
            "text",
            r.title(),
            x=_MARGIN,
            y=22.0,
            class_="title",
            **_text_attrs(15, font_weight="bold"),
        )
        out.add(
            "text", r.subtitle(), x=_MARGIN, y=40.0, class_="subtitle", **_text_attrs(11, "#555555")
        )
        self._grid()
        self._phases()
        self._rows()
        self._waits()
        self._markers()
        self._axis()
        if not self.ran:
            out.add(
                "text",
                "the app has not run yet: nothing to draw",
                x=self.left + _PLOT_WIDTH / 2,
                y=(self.rows_y + self.rows_bottom) / 2 + 4,
                class_="note empty",
                **_text_attrs(13, "#666666", text_anchor="middle"),
            )
        self._legend()
        out.parts.append("</svg>")
        return "\n".join(out.parts) + "\n"

    def _grid(self) -> None:
        """The axis breaks, as light bands through every row, and the grid lines."""
        out, axis = self.out, self.axis
        out.open("g", class_="grid")
        for x, _ in axis.ticks():
            out.add(
                "line",
                x1=x,
                y1=self.band_y,
                x2=x,
                y2=self.rows_bottom,
                stroke=_COLOURS["faint"],
                stroke_width=1,
            )
        for piece in axis.pieces:
            if piece.broken:
                out.open(
                    "g", class_="break", data_from=f"{piece.t0:.6f}", data_to=f"{piece.t1:.6f}"
                )
                out.title(f"axis break: {_duration(piece.t1 - piece.t0)} not drawn to scale")
                out.add(
                    "rect",
                    x=piece.x0,
                    y=self.band_y,
                    width=piece.x1 - piece.x0,
                    height=self.rows_bottom - self.band_y,
                    fill=_COLOURS["break"],
                )
                out.close("g")
        out.close("g")

    def _phases(self) -> None:
        out, y = self.out, self.band_y
        out.open("g", class_="phases")
        out.add("text", "app", x=_MARGIN, y=y + 12, **_text_attrs(12, font_weight="bold"))
        for phase, begin, finish in _phase_spans(self.r, self.end):
            x0, x1 = self.axis.x(begin), self.axis.x(finish)
            out.open("g", class_="phase", data_phase=phase)
            out.title(f"{phase}: {begin:.6g}s → {finish:.6g}s ({_duration(finish - begin)})")
            out.add(
                "rect",
                x=x0,
                y=y,
                width=max(x1 - x0, 1.0),
                height=16.0,
                fill=_COLOURS[phase],
                class_="phase-bar",
            )
            if x1 - x0 > len(phase) * 6.0 + 4:
                out.add("text", phase, x=x0 + 3, y=y + 12, **_text_attrs(10))
            out.close("g")
        out.close("g")

    def _rows(self) -> None:
        out = self.out
        out.open("g", class_="rows")
        for i, c in enumerate(self.r.components):
            y = self.rows_y + i * _ROW
            out.open("g", class_="row", data_name=c.name)
            if i % 2:
                out.add(
                    "rect",
                    x=_MARGIN,
                    y=y,
                    width=self.width - 2 * _MARGIN,
                    height=_ROW,
                    fill="#000000",
                    fill_opacity=0.03,
                )
            out.add(
                "text",
                _shorten(c.name, 40),
                x=_MARGIN,
                y=y + _ROW / 2 + 4,
                class_="name",
                **_text_attrs(12),
            )
            self._bars(c, y + (_ROW - _BAR) / 2)
            self._note(c, y)
            out.close("g")
        out.close("g")

    def _bars(self, c: _Component, bar_y: float) -> None:
        out, axis = self.out, self.axis
        if c.stop is not None and c.budget_end is not None:
            x0 = axis.x(c.stop.begin)
            out.add(
                "rect",
                x=x0,
                y=bar_y - 2,
                width=max(axis.x(c.budget_end) - x0, 0.0),
                height=_BAR + 4,
                fill="none",
                stroke=_COLOURS["budget"],
                stroke_opacity=0.45,
                stroke_dasharray="3 2",
                class_="budget",
                data_begin=f"{c.stop.begin:.6f}",
                data_end=f"{c.budget_end:.6f}",
            )
        bars = (("start", c.start, c.start_marked), ("stop", c.stop, c.stop_marked))
        for kind, bar, marked in bars:
            if bar is None:
                continue
            finish = self.end if bar.open else bar.end
            x0, x1 = axis.x(bar.begin), axis.x(finish)
            out.open("g", class_=f"bar {kind}" + (" marked" if marked else ""))
            took = "in progress" if bar.open else _duration(bar.end - bar.begin)
            out.title(f"{c.name} {kind}: at {bar.begin:.6g}s, {took}")
            out.add(
                "rect",
                x=x0,
                y=bar_y,
                width=max(x1 - x0, 1.5),
                height=_BAR,
                fill=_COLOURS["bad"] if marked else _COLOURS[kind],
                fill_opacity=0.5 if bar.open else 1.0,
                data_begin=f"{bar.begin:.6f}",
                data_end=f"{finish:.6f}",
            )
            out.close("g")

    def _note(self, c: _Component, y: float) -> None:
        """The label of what overran, failed or was cut: right of its bar, or left if no room."""
        note = c.note()
        if note is None:
            return
        bar = c.stop if c.stop_marked else c.start
        at = self.left if bar is None else self.axis.x(self.end if bar.open else bar.end) + 5
        label = _shorten(note, 90)
        size = len(label) * 6.0
        style = _text_attrs(11, _COLOURS["bad"])
        if at + size > self.width - _MARGIN and bar is not None:
            at = max(self.left + size, self.axis.x(bar.begin) - 5)
            style["text_anchor"] = "end"
        self.out.add("text", label, x=at, y=y + _ROW / 2 + 4, class_="note", **style)

    def _waits(self) -> None:
        """Who waited on whom: a dependent's stop end to its dependency's stop begin."""
        out, axis = self.out, self.axis
        out.open("g", class_="waits")
        by_name = {c.name: c for c in self.r.components}
        for c in self.r.components:
            if c.stop is None or c.stop.open:
                continue
            for dep in c.depends_on:
                other = by_name.get(dep)
                if other is None or other.stop is None or dep == c.name:
                    continue
                xa, xb = axis.x(c.stop.end), axis.x(other.stop.begin)
                ya, yb = self.centre[c.name], self.centre[dep]
                out.add(
                    "path",
                    d=f"M{xa:.2f},{ya:.2f} L{xb:.2f},{yb:.2f}",
                    fill="none",
                    stroke=_COLOURS["wait"],
                    stroke_width=1,
                    class_="wait",
                    data_from=c.name,
                    data_to=dep,
                )
        out.close("g")

    def _markers(self) -> None:
        """The shutdown request, the drain end and the deadline, as vertical lines."""
        out, r, top, bottom = self.out, self.r, self.band_y - 4, self.rows_bottom
        out.open("g", class_="markers")
        marks: list[tuple[str, float, str, str]] = []
        begin = r.shutdown_begin
        if begin is not None:
            marks.append(("requested", begin, "shutdown requested", _COLOURS["line"]))
        if r.drain_end is not None and r.drain_end != begin:
            marks.append(("drain-end", r.drain_end, "drain end", _COLOURS["line"]))
        if r.deadline is not None:
            marks.append(("deadline", r.deadline, "deadline", _COLOURS["deadline"]))
        labels: list[tuple[float, float, float]] = []  # (left, right, y) of each label placed
        for kind, at, label, colour in marks:
            x = self.axis.x(at)
            line: dict[str, object] = {"stroke": colour, "stroke_width": 1}
            if kind == "deadline":
                line = {"stroke": colour, "stroke_width": 1.5, "stroke_dasharray": "6 3"}
            out.add(
                "line",
                x1=x,
                y1=top,
                x2=x,
                y2=bottom + (4 if kind == "deadline" else 0),
                class_=f"marker {kind}",
                data_at=f"{at:.6f}",
                **line,
            )
            x, y, anchor = _place(labels, x, len(label) * 5.2, top - 2, self.width - _MARGIN)
            out.add("text", label, x=x, y=y, **_text_attrs(9, colour, text_anchor=anchor))
        out.close("g")

    def _axis(self) -> None:
        out, axis, y = self.out, self.axis, self.rows_bottom + 20
        first = axis.pieces[0]
        out.open(
            "g",
            class_="axis",
            data_origin_x=f"{first.x0:.4f}",
            data_origin_t=f"{first.t0:.6f}",
            data_scale=f"{axis.scale:.6g}",
            data_break_width=f"{_BREAK_WIDTH:g}",
        )
        for piece in axis.pieces:
            if not piece.broken:
                out.add(
                    "line",
                    x1=piece.x0,
                    y1=y,
                    x2=piece.x1,
                    y2=y,
                    stroke=_COLOURS["line"],
                    stroke_width=1,
                )
                continue
            step = (piece.x1 - piece.x0) / 6
            zig = " ".join(
                f"L{piece.x0 + k * step:.2f},{y + (-3 if k % 2 else 3):.2f}" for k in range(1, 6)
            )
            out.add(
                "path",
                d=f"M{piece.x0:.2f},{y:.2f} {zig} L{piece.x1:.2f},{y:.2f}",
                fill="none",
                stroke=_COLOURS["line"],
                stroke_width=1,
                class_="break-mark",
            )
            out.add(
                "text",
                f"+{_duration(piece.t1 - piece.t0)}",
                x=(piece.x0 + piece.x1) / 2,
                y=y - 6,
                **_text_attrs(9, "#666666", text_anchor="middle"),
            )
        for x, label in axis.ticks():
            out.add(
                "line",
                x1=x,
                y1=y,
                x2=x,
                y2=y + 4,
                stroke=_COLOURS["line"],
                stroke_width=1,
                class_="tick",
            )
            out.add(
                "text",
                label,
                x=x,
                y=y + 15,
                class_="tick-label",
                **_text_attrs(10, text_anchor="middle"),
            )
        out.close("g")

    def _legend(self) -> None:
        out = self.out
        out.open("g", class_="legend")
        for j, line in enumerate(self.legend_rows):
            x = _MARGIN
            y = self.legend_y + 18 * j
            for label, draw in line:
                draw(out, x, y)
                out.add("text", label, x=x + 22, y=y + 4, **_text_attrs(11))
                x += 30 + len(label) * 6.2
        out.close("g")


def _place(
    placed: list[tuple[float, float, float]], x: float, size: float, y: float, right: float
) -> tuple[float, float, str]:
    """Where a line's label goes: right of it, else left of it, else one line higher.

    Returns (x, y, text-anchor), and records the label's extent in ``placed``.
    """
    for dy in (0.0, -10.0, -20.0):
        for left, anchor in ((x + 2, "start"), (x - 2 - size, "end")):
            if left + size > right:
                continue
            free = all(
                row != y + dy or left + size + 4 <= a or b + 4 <= left for a, b, row in placed
            )
            if free:
                placed.append((left, left + size, y + dy))
                return (left if anchor == "start" else left + size), y + dy, anchor
    placed.append((x - 2 - size, x - 2, y - 20))
    return x - 2, y - 20, "end"


_Draw = Callable[[_Canvas, float, float], None]


def _swatch(colour: str, **more: object) -> _Draw:
    def draw(out: _Canvas, x: float, y: float) -> None:
        out.add("rect", x=x, y=y - 5, width=16.0, height=10.0, fill=colour, **more)

    return draw


def _stroke(colour: str, **more: object) -> _Draw:
    def draw(out: _Canvas, x: float, y: float) -> None:
        out.add("line", x1=x, y1=y, x2=x + 16, y2=y, stroke=colour, stroke_width=1.5, **more)

    return draw


def _legend() -> list[tuple[str, _Draw]]:
    return [
        ("start", _swatch(_COLOURS["start"])),
        ("stop", _swatch(_COLOURS["stop"])),
        ("stop budget", _swatch("none", stroke=_COLOURS["budget"], stroke_dasharray="3 2")),
        ("overran / failed / cut", _swatch(_COLOURS["bad"])),
        ("draining", _swatch(_COLOURS["draining"])),
        ("stopping", _swatch(_COLOURS["stopping"])),
        ("waited on (stop order)", _stroke(_COLOURS["wait"])),
        ("shutdown requested, drain end", _stroke(_COLOURS["line"])),
        ("deadline", _stroke(_COLOURS["deadline"], stroke_dasharray="6 3")),
        ("axis break", _swatch(_COLOURS["break"])),
    ]


def _legend_layout(
    items: Sequence[tuple[str, _Draw]], room: float
) -> list[list[tuple[str, _Draw]]]:
    lines: list[list[tuple[str, _Draw]]] = [[]]
    used = 0.0
    for label, draw in items:
        size = 30 + len(label) * 6.2
        if lines[-1] and used + size > room:
            lines.append([])
            used = 0.0
        lines[-1].append((label, draw))
        used += size
    return lines


# -- Mermaid ---------------------------------------------------------------------------

# Characters that end a task's name (":"), begin an entity, a comment or a
# directive ("#", "%"), end a statement (";") or a line, or could be read as
# HTML ("<", ">"): replaced by look-alikes that common fonts have (DejaVu,
# Liberation) and that Unicode normalization does not turn back (";" is not
# replaced by the Greek question mark, which NFC makes ";" again).
_MERMAID_SAFE: Final = str.maketrans(
    {
        ":": "\u2236",  # ratio
        "#": "\u266f",  # music sharp sign
        ";": "\u204f",  # reversed semicolon
        "%": "\u066a",  # Arabic percent sign
        "<": "\u2039",  # single left-pointing angle quotation mark
        ">": "\u203a",
        "\n": " ",
        "\r": " ",
        "\t": " ",
    }
)


def _mm(text: str, limit: int = 80) -> str:
    text = _NOT_XML.sub("\ufffd", text).translate(_MERMAID_SAFE)
    text = re.sub(r"[\x00-\x1f\x7f\u2028\u2029\x85]", " ", text)
    text = _shorten(text, limit)
    return text or "(unnamed)"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def mermaid(report: Mapping[str, Any]) -> str:
    """The run as Mermaid ``gantt`` text: an ``app`` section, then one section per component.

    The ``app`` section has a bar per phase (starting, running, draining,
    stopping) and milestones for the shutdown request and the deadline;
    each component's section has its ``start`` and ``stop`` bars (``crit``
    when it overran, failed or cut work, named in the bar's text). Times are
    milliseconds since the run began (``dateFormat x``). Names are made safe
    for Mermaid's syntax (``:``, ``#``, ``;``, ``%`` and line breaks become
    look-alikes), so no name can end a task or begin a statement.

    Raises:
        TypeError, ValueError: ``report`` is not a mapping with ``components``.

    Example::

        text = lifecycle.timeline.mermaid(app.report())
        Path("shutdown.mmd").write_text(text, encoding="utf-8")
    """
    r = _parse(report)
    times = [
        t for c in r.components for bar in (c.start, c.stop) if bar for t in (bar.begin, bar.end)
    ]
    times.extend(r.phases.values())
    end = max([0.0, *times])
    span = end - min([0.0, *times])
    axis_format = "%S.%L" if span < 60 else ("%M:%S" if span < 3600 else "%H:%M")
    lines = [
        "gantt",
        f"    title {_mm(r.title(), 120)}",
        "    dateFormat x",
        f"    axisFormat {axis_format}",
        "    todayMarker off",
        "    section app",
    ]
    spans = _phase_spans(r, end)
    for i, (phase, at, finish) in enumerate(spans):
        lines.append(f"    {phase} :active, p{i}, {_ms(at)}, {max(_ms(finish), _ms(at))}")
    requested = r.shutdown_begin
    if requested is not None:
        at_ms = _ms(requested)
        lines.append(f"    shutdown requested :milestone, req, {at_ms}, {at_ms}")
    if r.deadline is not None:
        lines.append(
            f"    deadline :crit, milestone, deadline, {_ms(r.deadline)}, {_ms(r.deadline)}"
        )
    if not spans and not r.components:
        lines.append("    the app has not run :milestone, none, 0, 0")
    for i, c in enumerate(r.components):
        lines.append(f"    section {_mm(c.name, 60)}")
        drawn = False
        for kind, bar, marked in (
            ("start", c.start, c.start_marked),
            ("stop", c.stop, c.stop_marked),
        ):
            if bar is None:
                continue
            drawn = True
            finish = end if bar.open else bar.end
            name = kind
            note = c.note() if marked else None
            if bar.open:
                name += " (in progress)"
            if note is not None:
                name += f" — {note}"
            tags = "crit, done" if marked else ("active" if bar.open else "done")
            a, b = _ms(bar.begin), _ms(finish)
            lines.append(f"    {_mm(name, 100)} :{tags}, c{i}{kind}, {a}, {max(a, b)}")
        if not drawn:
            lines.append(f"    not started :milestone, c{i}none, {_ms(end)}, {_ms(end)}")
    return "\n".join(lines) + "\n"


# -- writing ---------------------------------------------------------------------------

_WRITERS: Final[dict[str, Callable[[Mapping[str, Any]], str]]] = {".svg": svg, ".mmd": mermaid}


def write(report: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Draw ``report`` into ``path``: an SVG for ``.svg``, Mermaid text for ``.mmd``.

    The file is written whole or not at all (a temporary file in the same
    folder, then renamed over ``path``).

    Raises:
        ValueError: the suffix is neither ``.svg`` nor ``.mmd``.
        TypeError, ValueError: ``report`` is not a mapping with ``components``.
        OSError: the folder does not exist or cannot be written.

    Example::

        lifecycle.timeline.write(app.report(), "shutdown.svg")
    """
    target = os.fspath(path)
    suffix = os.path.splitext(target)[1]
    draw = _WRITERS.get(suffix.lower())
    if draw is None:
        raise ValueError(
            f"timeline: cannot write {target!r}: the suffix {suffix or '(none)'!r} is neither "
            f"'.svg' (a picture) nor '.mmd' (a Mermaid chart)"
        )
    text = draw(report)
    folder, base = os.path.split(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            errno.ENOENT, f"timeline: the folder of {target!r} does not exist; create it first"
        )
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
