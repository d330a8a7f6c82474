"""Small inline-SVG charts for the report cards: no plotting library to import, nothing to fetch.

Each function returns an `<svg>` string that a card embeds as is, so a card is one HTML file
that opens offline. Pure functions of their numbers.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

PASS, FAIL, BLUE, GREY = "#2e7d32", "#c62828", "#1f77b4", "#9e9e9e"
SECOND = "#ff7f0e"
FONT = 'font-family="sans-serif" font-size="11"'


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3g}"


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    label = escape(title)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{label}"><title>{label}</title>'
            + "".join(body) + "</svg>")


def bars(labels: Sequence[str], values: Sequence[float], title: str, *, colors: Sequence[str] | None = None,
         limit: float | None = None, width: int = 560, max_bars: int = 30) -> str:
    """Horizontal bars, one per label (the first `max_bars`), with an optional limit line."""
    labels, values = list(labels)[:max_bars], [0.0 if v is None or math.isnan(v) else float(v)
                                               for v in list(values)[:max_bars]]
    colors = list(colors or [BLUE] * len(values))[:max_bars]
    left, right, row = 150, 60, 18
    height = 24 + row * max(len(values), 1)
    top = max([abs(v) for v in values] + [abs(limit) if limit is not None else 0.0, 1e-12])
    scale = (width - left - right) / top
    body = [f'<text x="4" y="14" {FONT} font-weight="bold">{escape(title)}</text>']
    for i, (label, value, color) in enumerate(zip(labels, values, colors)):
        y = 22 + i * row
        body.append(f'<text x="{left - 4}" y="{y + 12}" {FONT} text-anchor="end">{escape(str(label)[:24])}</text>')
        body.append(f'<rect x="{left}" y="{y + 2}" width="{max(abs(value) * scale, 0.5):.1f}" height="{row - 5}" '
                    f'fill="{color}"/>')
        body.append(f'<text x="{left + abs(value) * scale + 4:.1f}" y="{y + 12}" {FONT}>{_fmt(value)}</text>')
    if limit is not None:
        x = left + abs(limit) * scale
        body.append(f'<line x1="{x:.1f}" y1="18" x2="{x:.1f}" y2="{height}" stroke="{FAIL}" stroke-dasharray="4 3"/>')
    return _svg(width, height, body, title)


def paired_bars(labels: Sequence[str], first: Sequence[float], second: Sequence[float], names: tuple[str, str],
                title: str, width: int = 560, max_bars: int = 30) -> str:
    """Two bars per label (e.g. reference vs batch fractions)."""
    labels = list(labels)[:max_bars]
    first, second = list(first)[:max_bars], list(second)[:max_bars]
    left, right, row = 150, 60, 24
    height = 40 + row * max(len(labels), 1)
    top = max(list(first) + list(second) + [1e-12])
    scale = (width - left - right) / top
    body = [f'<text x="4" y="14" {FONT} font-weight="bold">{escape(title)}</text>',
            f'<rect x="{left}" y="20" width="10" height="8" fill="{BLUE}"/>'
            f'<text x="{left + 14}" y="28" {FONT}>{escape(names[0])}</text>',
            f'<rect x="{left + 120}" y="20" width="10" height="8" fill="{SECOND}"/>'
            f'<text x="{left + 134}" y="28" {FONT}>{escape(names[1])}</text>']
    for i, label in enumerate(labels):
        y = 36 + i * row
        body.append(f'<text x="{left - 4}" y="{y + 14}" {FONT} text-anchor="end">{escape(str(label)[:24])}</text>')
        for j, (value, color) in enumerate(((first[i], BLUE), (second[i], SECOND))):
            body.append(f'<rect x="{left}" y="{y + 2 + j * 10}" width="{max(value * scale, 0.5):.1f}" height="9" '
                        f'fill="{color}"/>')
            body.append(f'<text x="{left + value * scale + 4:.1f}" y="{y + 10 + j * 10}" {FONT}>{_fmt(value)}</text>')
    return _svg(width, height, body, title)


def heatmap(matrix: Sequence[Sequence[float]], labels: Sequence[str], title: str, *,
            row_title: str = "true", col_title: str = "predicted") -> str:
    """A square matrix (confusion matrix) with counts in the cells."""
    n = len(labels)
    cell = max(18, min(48, 360 // max(n, 1)))
    left, top = 110, 40
    size = left + cell * n + 20
    peak = max([max(r) for r in matrix] + [1])
    body = [f'<text x="4" y="14" {FONT} font-weight="bold">{escape(title)}</text>',
            f'<text x="{left}" y="30" {FONT}>{escape(col_title)} &#8594;</text>',
            f'<text x="4" y="{top + 12}" {FONT}>{escape(row_title)} &#8595;</text>']
    for i, row in enumerate(matrix):
        body.append(f'<text x="{left - 4}" y="{top + i * cell + cell / 2 + 4:.1f}" {FONT} text-anchor="end">'
                    f'{escape(str(labels[i])[:14])}</text>')
        for j, value in enumerate(row):
            shade = value / peak
            fill = f"rgb({int(255 - 224 * shade)},{int(255 - 136 * shade)},{int(255 - 75 * shade)})"
            text = "#fff" if shade > 0.6 else "#000"
            body.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                        f'fill="{fill}" stroke="#fff"/>'
                        f'<text x="{left + j * cell + cell / 2:.1f}" y="{top + i * cell + cell / 2 + 4:.1f}" '
                        f'{FONT} text-anchor="middle" fill="{text}">{int(value) if float(value).is_integer() else _fmt(value)}</text>')
    return _svg(size, top + cell * n + 10, body, title)


def _axes(xs_all, ys_all, width, height, pad):
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = min(ys_all), max(ys_all)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = y1 if y1 > y0 else y0 + 1

    def px(x):
        return pad + (x - x0) / (x1 - x0) * (width - 2 * pad)

    def py(y):
        return height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)

    frame = [f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" '
             f'stroke="#ccc"/>',
             f'<text x="{pad}" y="{height - pad + 14}" {FONT}>{_fmt(x0)}</text>',
             f'<text x="{width - pad}" y="{height - pad + 14}" {FONT} text-anchor="end">{_fmt(x1)}</text>',
             f'<text x="{pad - 4}" y="{height - pad}" {FONT} text-anchor="end">{_fmt(y0)}</text>',
             f'<text x="{pad - 4}" y="{pad + 8}" {FONT} text-anchor="end">{_fmt(y1)}</text>']
    return px, py, frame


def scatter(xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str, ylabel: str, *,
            hline: float | None = None, width: int = 420, height: int = 300, max_points: int = 2000) -> str:
    """Points (e.g. predicted vs residual), with an optional horizontal reference line."""
    step = max(1, len(xs) // max_points)
    xs, ys = [float(x) for x in xs[::step]], [float(y) for y in ys[::step]]
    pad = 40
    px, py, frame = _axes(xs, ys + ([hline] if hline is not None else []), width, height, pad)
    body = [f'<text x="4" y="14" {FONT} font-weight="bold">{escape(title)}</text>', *frame,
            f'<text x="{width / 2}" y="{height - 6}" {FONT} text-anchor="middle">{escape(xlabel)}</text>',
            f'<text x="10" y="{height / 2}" {FONT} transform="rotate(-90 10 {height / 2})" '
            f'text-anchor="middle">{escape(ylabel)}</text>']
    if hline is not None:
        body.append(f'<line x1="{pad}" y1="{py(hline):.1f}" x2="{width - pad}" y2="{py(hline):.1f}" stroke="{FAIL}" '
                    f'stroke-dasharray="4 3"/>')
    body += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{BLUE}" fill-opacity="0.6"/>'
             for x, y in zip(xs, ys)]
    return _svg(width, height, body, title)
