"""Charts as plain geometry: the reports page turns numbers into rectangles, lines and labels here,
and templates/_charts.html draws them as inline SVG.

Geometry is computed in Python (typed, testable) so the template only places what it is given: no
JavaScript and no style attributes (the Content-Security-Policy allows only our stylesheet); colours
come from CSS classes `s0`…`s5` in static/app.css, one per series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

WIDTH = 640
LEFT, RIGHT, TOP, BOTTOM = 84, 16, 12, 44
PLOT_HEIGHT = 200
BAR_HEIGHT, BAR_GAP = 18, 8
BAR_LEFT = 120  # room for size and period labels left of horizontal bars
SERIES_CLASSES = 6
CURVE_SAMPLES = 48

Format = Callable[[float], str]


@dataclass(frozen=True)
class Tick:
    pos: float
    text: str


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    cls: str
    label: str


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    cls: str


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    cls: str
    label: str


@dataclass(frozen=True)
class Path:
    points: str
    cls: str


@dataclass(frozen=True)
class Chart:
    """Everything the SVG macro draws; `plot` is the (left, top, right, bottom) of the data area."""

    id: str
    title: str
    desc: str
    width: int
    height: int
    plot: tuple[float, float, float, float]
    x_label: str
    y_label: str
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    rects: list[Rect] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    dots: list[Dot] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Box:
    """A spread at one x: whiskers from low to high, a box from q1 to q3, a dot at the median."""

    x: float
    low: float
    q1: float
    median: float
    q3: float
    high: float
    label: str


@dataclass(frozen=True)
class Bar:
    label: str
    segments: Sequence[tuple[str, float]]  # (name, value), stacked left to right


def series_class(index: int) -> str:
    return f"s{index % SERIES_CLASSES}"


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """0 and round steps up to at least `high` (1, 2, 2.5 or 5 × a power of ten)."""
    if high <= 0 or not math.isfinite(high):
        return [0.0, 1.0]
    raw = high / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < high * (1 - 1e-9):
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _scale(domain_high: float, low: float, high: float, offset: float = 0.0) -> Callable[[float], float]:
    """Maps 0…domain_high onto low…high (pixels; high may be below low, as a y axis is)."""
    span = domain_high or 1.0

    def to_pixels(value: float) -> float:
        return low + (high - low) * (value + offset) / span

    return to_pixels


def xy_chart(
    chart_id: str,
    title: str,
    desc: str,
    *,
    x_label: str,
    y_label: str,
    y_format: Format,
    series: Sequence[Series] = (),
    boxes: Sequence[Box] = (),
    curve: Callable[[float], float] | None = None,
    curve_name: str = "",
    x_format: Format = lambda v: f"{v:g}",
    categories: Sequence[str] = (),
) -> Chart:
    """Lines with dots per series, optional boxes and a curve, on axes that start at zero.

    With `categories`, x is the index of a category (days, say) and the ticks name them."""
    right, bottom = WIDTH - RIGHT, TOP + PLOT_HEIGHT
    xs = [x for s in series for x, _ in s.points] + [b.x for b in boxes]
    ys = [y for s in series for _, y in s.points] + [b.high for b in boxes]
    if categories:
        # A category sits in the middle of its slot.
        to_x = _scale(len(categories), LEFT, right, offset=0.5)
        x_ticks = [Tick(to_x(i), text) for i, text in enumerate(categories)]
    else:
        x_values = nice_ticks(max(xs, default=0.0) * 1.05)
        to_x = _scale(x_values[-1], LEFT, right)
        x_ticks = [Tick(to_x(v), x_format(v)) for v in x_values]
    x_high = max(xs, default=0.0) * 1.05
    curve_points = (
        [(x_high * i / CURVE_SAMPLES, curve(x_high * i / CURVE_SAMPLES)) for i in range(CURVE_SAMPLES + 1)]
        if curve is not None
        else []
    )
    y_values = nice_ticks(max(ys + [y for _, y in curve_points], default=0.0))
    to_y = _scale(y_values[-1], bottom, TOP)
    chart = Chart(
        chart_id,
        title,
        desc,
        WIDTH,
        bottom + BOTTOM,
        (LEFT, TOP, right, bottom),
        x_label,
        y_label,
        x_ticks=x_ticks,
        y_ticks=[Tick(to_y(v), y_format(v)) for v in y_values],
    )
    for index, item in enumerate(series):
        cls = series_class(index)
        chart.legend.append((cls, item.name))
        points = [(to_x(x), to_y(y)) for x, y in item.points]
        if len(points) > 1:
            chart.paths.append(Path(_points(points), f"line {cls}"))
        for (x, y), (px, py) in zip(item.points, points, strict=True):
            chart.dots.append(Dot(px, py, f"dot {cls}", f"{item.name}: {x_format(x)}, {y_format(y)}"))
    for box in boxes:
        px = to_x(box.x)
        chart.lines.append(Line(px, to_y(box.low), px, to_y(box.high), "whisker"))
        top = to_y(box.q3)
        chart.rects.append(Rect(px - 6, top, 12, max(1.0, to_y(box.q1) - top), "box", box.label))
        chart.dots.append(Dot(px, to_y(box.median), "dot median", box.label))
    if curve_points:
        # The curve is cut where it leaves the plot, so a steep fit cannot draw over the labels.
        visible = [(to_x(x), to_y(min(y, y_values[-1]))) for x, y in curve_points if y >= 0]
        chart.paths.append(Path(_points(visible), "curve"))
        chart.legend.append(("curve", curve_name))
    return chart


def bar_chart(
    chart_id: str, title: str, desc: str, *, value_label: str, value_format: Format, bars: Sequence[Bar]
) -> Chart:
    """Horizontal bars, one a row, each stacked from its segments; one legend entry per segment name."""
    right = WIDTH - RIGHT
    bottom = TOP + len(bars) * (BAR_HEIGHT + BAR_GAP)
    totals = [sum(v for _, v in bar.segments) for bar in bars]
    values = nice_ticks(max(totals, default=0.0))
    to_x = _scale(values[-1], BAR_LEFT, right)
    chart = Chart(
        chart_id,
        title,
        desc,
        WIDTH,
        bottom + BOTTOM,
        (BAR_LEFT, TOP, right, bottom),
        value_label,
        "",
        x_ticks=[Tick(to_x(v), value_format(v)) for v in values],
    )
    names: list[str] = []
    for row, bar in enumerate(bars):
        y = TOP + row * (BAR_HEIGHT + BAR_GAP) + BAR_GAP / 2
        chart.y_ticks.append(Tick(y + BAR_HEIGHT / 2, bar.label))
        start = 0.0
        for name, value in bar.segments:
            if name not in names:
                names.append(name)
            left, end = to_x(start), to_x(start + value)
            label = f"{bar.label} {name}: {value_format(value)}"
            chart.rects.append(
                Rect(left, y, end - left, BAR_HEIGHT, f"bar {series_class(names.index(name))}", label)
            )
            start += value
    if len(names) > 1:
        chart.legend.extend((series_class(i), name) for i, name in enumerate(names))
    return chart


def _points(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
