"""Inline SVG charts generated in Python (no scripts, no external assets): bars, stacked columns, lines.

Every function returns one ``<svg>`` string sized by its arguments; text is escaped. Colours come from the
caller or from `PALETTE`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#9ca3af")
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'


def _open(width: int, height: int) -> str:
    # viewBox lets CSS scale the chart down to a narrow column instead of cropping it.
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == int(value):
        return str(int(value))
    return f"{value:.1f}"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def hbars(items: Sequence[tuple[str, float]], *, width: int = 560, colors: Sequence[str] | None = None,
          unit: str = "", label_width: int = 180) -> str:
    """Horizontal bars, one per (label, value), values written at the bar's end."""
    if not items:
        return ""
    row = 26
    height = row * len(items) + 10
    top = max((v for _, v in items), default=0) or 1
    plot = width - label_width - 70
    parts = [_open(width, height) + f'{FONT} font-size="12" '
             f'role="img">']
    for i, (label, value) in enumerate(items):
        y = 5 + i * row
        w = max(1.0, plot * value / top) if value > 0 else 0
        color = (colors[i % len(colors)] if colors else PALETTE[0])
        parts.append(f'<text x="{label_width - 8}" y="{y + 16}" text-anchor="end" fill="#374151">'
                     f'{escape(label)}</text>')
        parts.append(f'<rect x="{label_width}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" rx="3" '
                     f'fill="{color}"/>')
        parts.append(f'<text x="{label_width + w + 6:.1f}" y="{y + 16}" fill="#111827">{_fmt(value)}{unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _tick_count(span: float) -> int:
    """4 or 5 grid steps, whichever gives round step values (25 → 5 × 5, 200 → 4 × 50); small counts by 1."""
    if span == int(span) and 1 <= span <= 5:
        return int(span)
    for count in (4, 5):
        step = span / count
        if step == int(step) and step > 0:
            digits = str(int(step)).rstrip("0")
            if digits in ("1", "2", "5", "25"):
                return count
    return 4


def _axes(parts: list[str], left: int, top: int, plot_w: int, plot_h: int, y_min: float, y_max: float,
          ticks: int | None = None, unit: str = "") -> None:
    ticks = ticks or _tick_count(y_max - y_min)
    for k in range(ticks + 1):
        value = y_min + (y_max - y_min) * k / ticks
        y = top + plot_h - plot_h * k / ticks
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#6b7280">'
                     f'{_fmt(value)}{unit}</text>')


def _x_labels(parts: list[str], labels: Sequence[str], left: int, top: int, step: float, plot_h: int,
              centered: bool) -> None:
    every = max(1, len(labels) // 12)
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = left + step * (i + 0.5 if centered else i)
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#6b7280">'
                     f'{escape(label)}</text>')


def _legend(parts: list[str], names: Sequence[str], colors: Sequence[str], x: int, y: int) -> None:
    offset = 0
    for name, color in zip(names, colors, strict=False):
        parts.append(f'<rect x="{x + offset}" y="{y - 9}" width="10" height="10" rx="2" fill="{color}"/>')
        parts.append(f'<text x="{x + offset + 14}" y="{y}" fill="#374151">{escape(name)}</text>')
        offset += 24 + 7 * len(name)


def stacked_columns(x_labels: Sequence[str], series: Mapping[str, Sequence[float]], *, width: int = 1080,
                    height: int = 300, colors: Sequence[str] | None = None, unit: str = "") -> str:
    """One column per x label, stacked by series (in the dict's order), with a legend on top."""
    if not x_labels or not series:
        return ""
    colors = list(colors or PALETTE)
    left, top, right, bottom = 56, 30, 16, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(x_labels))]
    y_max = _nice_max(max(totals, default=0))
    step = plot_w / len(x_labels)
    parts = [_open(width, height) + f'{FONT} font-size="11" '
             f'role="img">']
    _axes(parts, left, top, plot_w, plot_h, 0, y_max, unit=unit)
    for i in range(len(x_labels)):
        base = 0.0
        for k, values in enumerate(series.values()):
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / y_max
            y = top + plot_h - plot_h * (base + value) / y_max
            parts.append(f'<rect x="{left + step * i + step * 0.12:.1f}" y="{y:.1f}" width="{step * 0.76:.1f}" '
                         f'height="{h:.1f}" fill="{colors[k % len(colors)]}"/>')
            base += value
    _x_labels(parts, x_labels, left, top, step, plot_h, centered=True)
    _legend(parts, list(series), colors, left, 14)
    parts.append("</svg>")
    return "".join(parts)


def lines(x_labels: Sequence[str], series: Mapping[str, Sequence[float | None]], *, width: int = 1080,
          height: int = 280, y_min: float | None = None, y_max: float | None = None,
          colors: Sequence[str] | None = None, unit: str = "", zero_line: bool = False) -> str:
    """A line per series over the x labels; None values leave a gap (no data in that bucket)."""
    values = [v for vs in series.values() for v in vs if v is not None]
    if not x_labels or not values:
        return ""
    colors = list(colors or PALETTE)
    lo = min(values) if y_min is None else y_min
    hi = _nice_max(max(values)) if y_max is None else y_max
    if hi <= lo:
        hi = lo + 1
    left, top, right, bottom = 56, 30, 34, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(1, len(x_labels) - 1)
    parts = [_open(width, height) + f'{FONT} font-size="11" '
             f'role="img">']
    _axes(parts, left, top, plot_w, plot_h, lo, hi, unit=unit)
    if zero_line and lo < 0 < hi:
        y0 = top + plot_h - plot_h * (0 - lo) / (hi - lo)
        parts.append(f'<line x1="{left}" y1="{y0:.1f}" x2="{left + plot_w}" y2="{y0:.1f}" stroke="#9ca3af" '
                     f'stroke-dasharray="4 3"/>')
    for k, values_k in enumerate(series.values()):
        color = colors[k % len(colors)]
        segment: list[str] = []
        for i, value in enumerate(values_k):
            if value is None:
                if len(segment) > 1:
                    parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2.2" '
                                 f'points="{" ".join(segment)}"/>')
                segment = []
                continue
            x = left + step * i
            y = top + plot_h - plot_h * (value - lo) / (hi - lo)
            segment.append(f"{x:.1f},{y:.1f}")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.8" fill="{color}"/>')
        if len(segment) > 1:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2.2" points="{" ".join(segment)}"/>')
    _x_labels(parts, x_labels, left, top, step, plot_h, centered=False)
    _legend(parts, list(series), colors, left, 14)
    parts.append("</svg>")
    return "".join(parts)


def columns(items: Sequence[tuple[str, float]], *, width: int = 520, height: int = 220,
            colors: Sequence[str] | None = None, unit: str = "") -> str:
    """Vertical columns (a histogram when the labels are bins)."""
    if not items:
        return ""
    left, top, right, bottom = 44, 14, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    y_max = _nice_max(max((v for _, v in items), default=0))
    step = plot_w / len(items)
    parts = [_open(width, height) + f'{FONT} font-size="11" '
             f'role="img">']
    _axes(parts, left, top, plot_w, plot_h, 0, y_max, unit=unit)
    for i, (_label, value) in enumerate(items):
        h = plot_h * value / y_max
        color = colors[i % len(colors)] if colors else PALETTE[0]
        parts.append(f'<rect x="{left + step * i + step * 0.1:.1f}" y="{top + plot_h - h:.1f}" '
                     f'width="{step * 0.8:.1f}" height="{h:.1f}" rx="2" fill="{color}"/>')
    _x_labels(parts, [label for label, _ in items], left, top, step, plot_h, centered=True)
    parts.append("</svg>")
    return "".join(parts)
