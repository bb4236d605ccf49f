"""Small charts drawn on the server as inline SVG: no JavaScript library, no CDN.

Two shapes, enough for the dashboard:

- :func:`stacked_columns`: one column per category (an hour), stacked by
  series (a run status), with a y axis of counts, x labels and a legend;
- :func:`grouped_bars`: one row per label (a job), a horizontal bar per
  series (p95 duration, p95 lateness), with an x axis and a legend.

Each chart is an ``<svg role="img">`` with a ``<title>`` and an
``aria-label``, and a ``<title>`` on every bar (the exact value on hover and
for screen readers); every bar also carries ``data-series`` and
``data-value`` so tests can read what was drawn. All text is escaped.
Edge cases: no data draws the axes and says "no data"; zeros draw no bar; a
value never makes the axis smaller than 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

FONT = 'font-family="sans-serif" font-size="11" fill="#333"'
AXIS_COLOR = "#888"
GRID_COLOR = "#e5e5e5"


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    color: str


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 × 10^k at or above ``value`` (at least 1): an axis's top."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)  # not reached: 10 × power ≥ value


def _ticks(top: float) -> list[float]:
    """Gridlines from 0 to ``top`` (a nice ceiling) on whole steps: 1 → 0, 1; 2000 → 0, 400, … 2000."""
    count = next(n for n in (5, 4, 2, 1) if (top / n).is_integer())
    return [top * i / count for i in range(count + 1)]


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


CHAR_WIDTH = 6.2  # a rough width of one character at font-size 11, to lay the legend out
LEGEND_ROW = 16


def _legend(series: Sequence[Series], left: float, right: float) -> tuple[list[str], int]:
    """Legend items from ``left``, wrapped before ``right``; returns them and how many rows they took."""
    parts, x, row = [], left, 0
    for series_item in series:
        width = 20 + CHAR_WIDTH * len(series_item.label)
        if x + width > right and x > left:
            x, row = left, row + 1
        y = 14 + row * LEGEND_ROW
        parts.append(
            f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{escape(series_item.color)}"/>'
            f'<text x="{x + 14:.1f}" y="{y:.1f}" {FONT}>{escape(series_item.label)}</text>'
        )
        x += width
    return parts, row + 1


def _svg(title: str, width: int, height: int, body: list[str]) -> SafeString:
    label = escape(title)
    return mark_safe(  # noqa: S308 (every piece of text above went through escape)
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{label}" '
        f'viewBox="0 0 {width} {height}" width="100%" style="max-width:{width}px">'
        f"<title>{label}</title>{''.join(body)}</svg>"
    )


def stacked_columns(
    title: str,
    categories: Sequence[str],
    series: Sequence[Series],
    values: Sequence[dict[str, int]],
    *,
    label_every: int = 1,
    describe: Callable[[str, Series, int], str] | None = None,
    width: int = 760,
    height: int = 260,
) -> SafeString:
    """Columns of ``values[i][series.key]`` stacked per category, bottom to top in ``series`` order.

    ``label_every`` labels every n-th category on the x axis (24 hours: every
    3rd); ``describe(category, series, value)`` words a segment's tooltip.
    """
    left, right, bottom = 48, 10, 40
    body, legend_rows = _legend(series, left, width - right)
    top = 14 + legend_rows * LEGEND_ROW
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(v.get(s.key, 0) for s in series) for v in values]
    y_top = nice_ceiling(max(totals, default=0))
    for tick in _ticks(y_top):
        y = top + plot_h - tick / y_top * plot_h
        body.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID_COLOR}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{_number(tick)}</text>'
        )
    slot = plot_w / max(1, len(categories))
    bar_w = max(1.0, slot * 0.75)
    for i, (category, column) in enumerate(zip(categories, values, strict=True)):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        for series_item in series:
            value = column.get(series_item.key, 0)
            if not value:
                continue
            h = value / y_top * plot_h
            y -= h
            tip = describe(category, series_item, value) if describe else f"{category}: {value}"
            body.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{escape(series_item.color)}" data-series="{escape(series_item.key)}" '
                f'data-category="{escape(category)}" data-value="{value}"><title>{escape(tip)}</title></rect>'
            )
        if i % label_every == 0:
            body.append(
                f'<text x="{left + i * slot + slot / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                f"{FONT}>{escape(category)}</text>"
            )
    body.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="{AXIS_COLOR}"/>'
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" '
        f'stroke="{AXIS_COLOR}"/>'
    )
    if not any(totals):
        body.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
            f"{FONT}>no data</text>"
        )
    return _svg(title, width, height, body)


def grouped_bars(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    values: Sequence[dict[str, float | None]],
    *,
    unit: str,
    width: int = 760,
) -> SafeString:
    """One row per label, one horizontal bar per series; ``None`` (no figure) draws no bar."""
    left, right, bar_h, gap = 170, 60, 12, 10
    body, legend_rows = _legend(series, left, width - right)
    top = 14 + legend_rows * LEGEND_ROW
    row_h = bar_h * len(series) + gap
    plot_w = width - left - right
    plot_h = max(row_h, row_h * len(labels))
    height = top + plot_h + 30
    figures = [v for row in values for v in row.values() if v is not None]
    x_top = nice_ceiling(max(figures, default=0))
    for tick in _ticks(x_top):
        x = left + tick / x_top * plot_w
        body.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="{GRID_COLOR}"/>'
            f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle" {FONT}>{_number(tick)}</text>'
        )
    body.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 28}" text-anchor="middle" {FONT}>'
        f"{escape(unit)}</text>"
    )
    for i, (label, row) in enumerate(zip(labels, values, strict=True)):
        y = top + i * row_h + gap / 2
        shown = label if len(label) <= 26 else label[:25] + "…"
        body.append(
            f'<text x="{left - 6}" y="{y + row_h / 2:.1f}" text-anchor="end" {FONT}>'
            f"<title>{escape(label)}</title>{escape(shown)}</text>"
        )
        for j, series_item in enumerate(series):
            value = row.get(series_item.key)
            if value is None:
                continue
            w = value / x_top * plot_w
            by = y + j * bar_h
            body.append(
                f'<rect class="bar" x="{left}" y="{by:.1f}" width="{w:.1f}" height="{bar_h - 2}" '
                f'fill="{escape(series_item.color)}" data-series="{escape(series_item.key)}" '
                f'data-category="{escape(label)}" data-value="{value:g}">'
                f"<title>{escape(f'{label}: {series_item.label} {_number(value)} {unit}')}</title></rect>"
                f'<text x="{left + w + 4:.1f}" y="{by + bar_h - 3:.1f}" {FONT}>{_number(value)}</text>'
            )
    body.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="{AXIS_COLOR}"/>')
    if not labels:
        body.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2 + 4:.1f}" text-anchor="middle" '
            f"{FONT}>no data</text>"
        )
    return _svg(title, width, height, body)
