"""Small inline SVG charts for the release report: line charts (linear or log scale) and grouped bars.

This module owns drawing only: it turns plain numbers into self-contained SVG text (no scripts, no
external fonts or styles), so a report built from it opens anywhere without a network. Every string that
reaches the SVG is escaped here; callers pass raw names and labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

SVG_NS = "http://www.w3.org/2000/svg"
# Colour-blind-safe palette (Okabe-Ito), in the order series usually come: stable, canary, extras.
STABLE_COLOR = "#0072B2"
CANARY_COLOR = "#D55E00"
PALETTE = (STABLE_COLOR, CANARY_COLOR, "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
VERDICT_COLORS = {"pass": "#009E73", "fail": "#D55E00", "inconclusive": "#E69F00", "error": "#CC79A7"}

_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 56, 12, 28, 52


@dataclass(frozen=True)
class Series:
    """One line. `None` values leave a gap. `steps` draws a step line where each value holds back to the
    previous x: a point (t, w) says "w during the interval that ended at t", as analysis records do."""

    label: str
    points: tuple[tuple[float, float | None], ...]
    color: str = STABLE_COLOR
    dashed: bool = False
    steps: bool = False


@dataclass(frozen=True)
class Marker:
    """A dot on a chart, e.g. one analysis verdict; `label` becomes its hover text."""

    x: float
    y: float
    color: str
    label: str


@dataclass(frozen=True)
class Rule:
    """A horizontal reference line, e.g. a check's threshold."""

    y: float
    label: str
    color: str = "#555555"


@dataclass(frozen=True)
class _Frame:
    """Maps data coordinates into the plot area of one chart."""

    width: int
    height: int
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    log_y: bool

    def x(self, value: float) -> float:
        span = (self.x_hi - self.x_lo) or 1.0
        return _MARGIN_LEFT + (value - self.x_lo) / span * (self.width - _MARGIN_LEFT - _MARGIN_RIGHT)

    def y(self, value: float) -> float:
        lo, hi, v = self.y_lo, self.y_hi, value
        if self.log_y:
            lo, hi, v = math.log10(lo), math.log10(hi), math.log10(max(value, self.y_lo))
        span = (hi - lo) or 1.0
        v = min(max(v, lo), hi)
        return self.height - _MARGIN_BOTTOM - (v - lo) / span * (self.height - _MARGIN_TOP - _MARGIN_BOTTOM)


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if 1e-2 <= abs(value) < 1e4 and value == round(value):
        return f"{value:.0f}"
    if abs(value) >= 1e4 or abs(value) < 1e-2:
        exp = math.floor(math.log10(abs(value)))
        mant = value / 10**exp
        return f"1e{exp}" if math.isclose(mant, 1.0) else f"{value:.1e}"
    return f"{value:.3g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 5 times a power of ten)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    ticks, value = [round(start, 12)], start
    while value < hi - step * 1e-9:
        value += step
        ticks.append(round(value, 12))
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    every = max(1, math.ceil((last - first) / 6))
    return [10.0**e for e in range(first, last + 1, every)]


def _svg_open(width: int, height: int, title: str, kind: str) -> list[str]:
    return [f'<svg xmlns="{SVG_NS}" class="chart" data-chart="{_attr(kind)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_attr(title)}">',
            f"<title>{escape(title)}</title>",
            f'<text x="{_MARGIN_LEFT}" y="16" class="chart-title">{escape(title)}</text>']


def _no_data(width: int, height: int, title: str, kind: str) -> str:
    parts = _svg_open(width, height, title, kind)
    parts.append(f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" class="no-data">'
                 "no data yet</text></svg>")
    return "\n".join(parts)


def _axes(f: _Frame, y_ticks: Sequence[float], x_ticks: Sequence[float], x_label: str, y_label: str) -> list[str]:
    left, right = _MARGIN_LEFT, f.width - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, f.height - _MARGIN_BOTTOM
    out = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" class="plot"/>']
    for v in y_ticks:
        y = f.y(v)
        out.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(v)}</text>')
    for v in x_ticks:
        x = f.x(v)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" class="grid"/>'
                   f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" class="tick">{_fmt(v)}</text>')
    out.append(f'<text x="{(left + right) / 2:.1f}" y="{bottom + 28}" text-anchor="middle" class="axis-label">'
               f"{escape(x_label)}</text>")
    out.append(f'<text x="12" y="{(top + bottom) / 2:.1f}" text-anchor="middle" class="axis-label" '
               f'transform="rotate(-90 12 {(top + bottom) / 2:.1f})">{escape(y_label)}</text>')
    return out


def _path(f: _Frame, s: Series) -> str:
    """SVG path data; a `None` value breaks the line, a step series jumps at the previous x."""
    d: list[str] = []
    pen_down = False
    last_x = 0.0
    for x, y in s.points:
        if y is None or not math.isfinite(y):
            pen_down = False
            continue
        px, py = f.x(x), f.y(y)
        if pen_down and s.steps:
            d.append(f"L{last_x:.1f},{py:.1f}")
        d.append(f"{'L' if pen_down else 'M'}{px:.1f},{py:.1f}")
        pen_down, last_x = True, px
    return " ".join(d)


def _series_svg(f: _Frame, s: Series) -> str:
    dash = ' stroke-dasharray="5 3"' if s.dashed else ""
    dots = "".join(f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="2.2" fill="{_attr(s.color)}"/>'
                   for x, y in s.points if y is not None and math.isfinite(y))
    return (f'<g class="series" data-series="{_attr(s.label)}"><path d="{_path(f, s)}" fill="none" '
            f'stroke="{_attr(s.color)}" stroke-width="1.8"{dash}/>{dots}</g>')


def _legend(f: _Frame, entries: Sequence[tuple[str, str, bool]]) -> list[str]:
    out, x = [], float(_MARGIN_LEFT)
    y = f.height - 10
    for label, color, dashed in entries:
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(f'<line x1="{x:.1f}" x2="{x + 16:.1f}" y1="{y - 4}" y2="{y - 4}" stroke="{_attr(color)}" '
                   f'stroke-width="2"{dash}/><text x="{x + 20:.1f}" y="{y}" class="legend">{escape(label)}</text>')
        x += 28 + 6.2 * len(label)
    return out


def line_chart(title: str, series: Sequence[Series], *, x_label: str = "seconds since start", y_label: str = "",
               log_y: bool = False, y_min: float | None = None, y_max: float | None = None,
               rules: Sequence[Rule] = (), markers: Sequence[Marker] = (), kind: str = "line",
               width: int = 600, height: int = 230) -> str:
    """A line chart as one `<svg>` element; `kind` is stored in `data-chart` so tests and CSS can find it."""
    xs = [x for s in series for x, _ in s.points] + [m.x for m in markers]
    ys = [y for s in series for _, y in s.points if y is not None and math.isfinite(y)]
    ys += [m.y for m in markers] + [r.y for r in rules]
    if log_y:
        ys = [y for y in ys if y > 0]
    if not xs or not ys:
        return _no_data(width, height, title, kind)
    f = _frame(width, height, xs, ys, log_y, y_min, y_max)
    y_ticks = _log_ticks(f.y_lo, f.y_hi) if log_y else nice_ticks(f.y_lo, f.y_hi, 4)
    y_ticks = [v for v in y_ticks if f.y_lo <= v <= f.y_hi]
    x_ticks = [v for v in nice_ticks(f.x_lo, f.x_hi, 6) if f.x_lo <= v <= f.x_hi]
    parts = _svg_open(width, height, title, kind) + _axes(f, y_ticks, x_ticks, x_label, y_label)
    for r in rules:
        y = f.y(r.y)
        parts.append(f'<g class="rule" data-rule="{_attr(r.label)}"><line x1="{_MARGIN_LEFT}" '
                     f'x2="{width - _MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{_attr(r.color)}" '
                     f'stroke-dasharray="2 3" stroke-width="1.4"/><text x="{width - _MARGIN_RIGHT - 4}" '
                     f'y="{y - 4:.1f}" text-anchor="end" class="rule-label">{escape(r.label)}</text></g>')
    parts.extend(_series_svg(f, s) for s in series)
    for m in markers:
        parts.append(f'<circle class="marker" cx="{f.x(m.x):.1f}" cy="{f.y(m.y):.1f}" r="5" '
                     f'fill="{_attr(m.color)}" stroke="#ffffff" stroke-width="1.2"><title>{escape(m.label)}'
                     "</title></circle>")
    parts += _legend(f, [(s.label, s.color, s.dashed) for s in series])
    parts.append("</svg>")
    return "\n".join(parts)


def _frame(width: int, height: int, xs: Sequence[float], ys: Sequence[float], log_y: bool,
           y_min: float | None, y_max: float | None) -> _Frame:
    x_lo, x_hi = min(xs), max(xs)
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1.0, x_hi + 1.0
    y_lo = y_min if y_min is not None else min(ys)
    y_hi = y_max if y_max is not None else max(ys)
    if log_y:
        y_lo = 10 ** math.floor(math.log10(max(y_lo, 1e-300)))
        y_hi = 10 ** math.ceil(math.log10(max(y_hi, y_lo * 10)))
    else:
        if y_min is None:
            y_lo = min(0.0, y_lo)
        if y_hi <= y_lo:
            y_hi = y_lo + 1.0
        if y_max is None:
            ticks = nice_ticks(y_lo, y_hi * 1.05, 4)
            y_hi = ticks[-1]
    return _Frame(width, height, x_lo, x_hi, y_lo, y_hi, log_y)


def bar_chart(title: str, categories: Sequence[str], groups: Sequence[tuple[str, Sequence[float], str]], *,
              y_label: str = "", x_label: str = "", value_format: Callable[[float], str] = _fmt,
              kind: str = "bars", width: int = 600, height: int = 230) -> str:
    """Grouped bars: one group per category, one bar per (label, values, colour) in `groups`."""
    values = [v for _, vs, _ in groups for v in vs]
    if not categories or not values or max(values) <= 0:
        return _no_data(width, height, title, kind)
    f = _Frame(width, height, 0.0, float(len(categories)), 0.0, nice_ticks(0.0, max(values) * 1.05, 4)[-1], False)
    parts = _svg_open(width, height, title, kind) + _axes(f, nice_ticks(0.0, f.y_hi, 4), [], x_label, y_label)
    slot = (width - _MARGIN_LEFT - _MARGIN_RIGHT) / len(categories)
    bar = slot * 0.8 / len(groups)
    for gi, (label, vs, color) in enumerate(groups):
        parts.append(f'<g class="series" data-series="{_attr(label)}">')
        for ci, v in enumerate(vs):
            x = f.x(ci) + slot * 0.1 + gi * bar
            top = f.y(v)
            parts.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar:.1f}" height="{f.y(0) - top:.1f}" '
                         f'fill="{_attr(color)}"><title>{escape(label)} {escape(categories[ci])}: '
                         f"{escape(value_format(v))}</title></rect>")
        parts.append("</g>")
    for ci, cat in enumerate(categories):
        parts.append(f'<text x="{f.x(ci) + slot / 2:.1f}" y="{height - _MARGIN_BOTTOM + 14}" '
                     f'text-anchor="middle" class="tick">{escape(cat)}</text>')
    parts += _legend(f, [(label, color, False) for label, _, color in groups])
    parts.append("</svg>")
    return "\n".join(parts)
