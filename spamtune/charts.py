"""Line charts as SVG text: axes with round-number ticks, lines, steps, markers and a legend.

What a run's pictures need and no more. Written by hand rather than with matplotlib, whose
import and layout took 0.77 s of every fine-tune (a second run on a kept prefix cache takes
~17 s in all) and which builds a font cache of several seconds on a machine's first run. An
SVG is text: small, sharp at any size, shown by every browser and most image viewers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

# matplotlib's default colour cycle, so the pictures look as they did.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
DASHES = {"solid": None, "dashdot": "8,3,2,3", "dotted": "2,3", "dashed": "6,4"}
FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'


def nice_ticks(low: float, high: float, most: int = 7) -> list[float]:
    """Round-number tick positions (steps of 1, 2 or 5 times a power of ten) within
    ``[low, high]``, at most ``most`` of them."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / max(most - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9)
    ticks = []
    k = first
    while k * step <= high + step * 1e-9:
        ticks.append(round(k * step, 12))
        k += 1
    return ticks


def tick_label(value: float) -> str:
    return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.3g}"


@dataclass
class Series:
    xs: Sequence[float]
    ys: Sequence[float]
    label: str
    colour: str
    dash: str = "solid"
    marker: str | None = None  # "circle" or "square"
    step: bool = False  # a staircase: horizontal to each next x, then vertical
    line: bool = True


@dataclass
class Chart:
    """One panel. ``x_range``/``y_range`` None: the data's extent with a 5% margin.
    ``top_axis`` (label, x -> top value, top value -> x) adds a second x axis above."""

    x_label: str
    y_label: str
    x_range: tuple[float, float] | None = None
    y_range: tuple[float, float] | None = None
    legend: str = "best"  # or "upper right", "upper left", "lower right", "lower left"
    top_axis: tuple[str, Callable[[float], float], Callable[[float], float]] | None = None
    series: list[Series] = field(default_factory=list)

    def plot(self, xs, ys, label: str, *, colour: str | None = None, dash: str = "solid", marker: str | None = None, step: bool = False, line: bool = True) -> None:
        colour = colour or COLOURS[len(self.series) % len(COLOURS)]
        self.series.append(Series(list(xs), list(ys), label, colour, dash, marker, step, line))

    def _range(self, axis: int, given: tuple[float, float] | None) -> tuple[float, float]:
        if given is not None:
            return given
        values = [v for s in self.series for v in (s.xs if axis == 0 else s.ys) if math.isfinite(v)]
        if not values:
            return (0.0, 1.0)
        low, high = min(values), max(values)
        margin = (high - low) * 0.05 or abs(low) * 0.05 or 0.5
        return (low - margin, high + margin)

    def render(self, left: float, top: float, width: float, height: float, ident: str = "panel") -> list[str]:
        """SVG elements drawing this panel in the box at ``(left, top)``; ``ident`` names its
        clipping region, unique within the picture."""
        x0, x1 = self._range(0, self.x_range)
        y0, y1 = self._range(1, self.y_range)
        pad_left, pad_right, pad_bottom = 62.0, 14.0, 46.0
        pad_top = 50.0 if self.top_axis else 14.0
        px0, px1 = left + pad_left, left + width - pad_right
        py0, py1 = top + height - pad_bottom, top + pad_top  # y grows downwards in SVG

        def sx(x: float) -> float:
            return px0 + (x - x0) / (x1 - x0) * (px1 - px0)

        def sy(y: float) -> float:
            return py0 + (y - y0) / (y1 - y0) * (py1 - py0)

        out = [f'<rect x="{px0:.1f}" y="{py1:.1f}" width="{px1 - px0:.1f}" height="{py0 - py1:.1f}" fill="white" stroke="black" stroke-width="1"/>']
        for x in nice_ticks(x0, x1):
            out.append(f'<line x1="{sx(x):.1f}" y1="{py0:.1f}" x2="{sx(x):.1f}" y2="{py0 + 4:.1f}" stroke="black"/>')
            out.append(_text(sx(x), py0 + 17, tick_label(x), "middle"))
        for y in nice_ticks(y0, y1):
            out.append(f'<line x1="{px0 - 4:.1f}" y1="{sy(y):.1f}" x2="{px0:.1f}" y2="{sy(y):.1f}" stroke="black"/>')
            out.append(_text(px0 - 7, sy(y) + 4, tick_label(y), "end"))
        out.append(_text((px0 + px1) / 2, py0 + 38, self.x_label, "middle", size=13))
        out.append(_text(left + 16, (py0 + py1) / 2, self.y_label, "middle", size=13, rotate=True))
        if self.top_axis:
            label, forward, inverse = self.top_axis
            for value in nice_ticks(forward(x0), forward(x1)):
                x = inverse(value)
                out.append(f'<line x1="{sx(x):.1f}" y1="{py1 - 4:.1f}" x2="{sx(x):.1f}" y2="{py1:.1f}" stroke="black"/>')
                out.append(_text(sx(x), py1 - 8, tick_label(value), "middle"))
            out.append(_text((px0 + px1) / 2, py1 - 27, label, "middle", size=13))
        clip = f"clip-{ident}"
        out.append(f'<clipPath id="{clip}"><rect x="{px0:.1f}" y="{py1:.1f}" width="{px1 - px0:.1f}" height="{py0 - py1:.1f}"/></clipPath>')
        drawn: list[tuple[float, float]] = []
        for s in self.series:
            points = [(sx(x), sy(y)) for x, y in zip(s.xs, s.ys) if math.isfinite(x) and math.isfinite(y)]
            drawn += points
            if s.step:
                points = [p for a, b in zip(points, points[1:]) for p in (a, (b[0], a[1]))] + points[-1:]
            dash = DASHES.get(s.dash)
            if s.line and len(points) > 1:
                coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
                dashing = f' stroke-dasharray="{dash}"' if dash else ""
                out.append(f'<polyline clip-path="url(#{clip})" points="{coords}" fill="none" stroke="{s.colour}" stroke-width="1.8"{dashing}/>')
            if s.marker and not s.step:
                out += [_marker(s.marker, x, y, s.colour) for x, y in points]
        out += self._legend(px0, px1, py0, py1, drawn)
        return out

    def _legend(self, px0: float, px1: float, py0: float, py1: float, drawn: list[tuple[float, float]]) -> list[str]:
        if not self.series:
            return []
        rows, row_height = len(self.series), 18.0
        width = 46 + 6.2 * max(len(s.label) for s in self.series)
        height = rows * row_height + 8

        def box(corner: str) -> tuple[float, float]:
            return (px0 + 8 if "left" in corner else px1 - 8 - width, py1 + 8 if "upper" in corner else py0 - 8 - height)

        def covered(corner: str) -> int:
            left, top = box(corner)
            return sum(left - 4 <= x <= left + width + 4 and top - 4 <= y <= top + height + 4 for x, y in drawn)

        corner = self.legend
        if corner == "best":  # the corner hiding the fewest points, as matplotlib's "best" does
            corner = min(("upper right", "upper left", "lower left", "lower right"), key=covered)
        left, top = box(corner)
        out = [f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{height:.1f}" fill="white" fill-opacity="0.85" stroke="#cccccc" rx="3"/>']
        for i, s in enumerate(self.series):
            y = top + 4 + row_height * (i + 0.5)
            dash = DASHES.get(s.dash)
            if s.line:
                dashing = f' stroke-dasharray="{dash}"' if dash else ""
                out.append(f'<line x1="{left + 6:.1f}" y1="{y:.1f}" x2="{left + 34:.1f}" y2="{y:.1f}" stroke="{s.colour}" stroke-width="1.8"{dashing}/>')
            if s.marker:
                out.append(_marker(s.marker, left + 20, y, s.colour))
            out.append(_text(left + 40, y + 4, s.label, "start"))
        return out


def _text(x: float, y: float, text: str, anchor: str, size: int = 11, rotate: bool = False) -> str:
    turn = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {FONT}{turn}>{escape(text)}</text>'


def _marker(kind: str, x: float, y: float, colour: str) -> str:
    if kind == "square":
        return f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="{colour}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>'


def render_svg(charts: Sequence[Chart], panel_width: int = 500, panel_height: int = 420) -> str:
    """A whole picture: ``charts`` side by side."""
    width = panel_width * len(charts)
    body = [line for i, chart in enumerate(charts) for line in chart.render(i * panel_width, 0, panel_width, panel_height, f"panel{i}")]
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{panel_height}" viewBox="0 0 {width} {panel_height}">',
        f'<rect width="{width}" height="{panel_height}" fill="white"/>',
        *body,
        "</svg>",
        "",
    ])  # fmt: skip
