"""Small server-drawn SVG charts: no script, no CDN, and the CSP's 'self' is enough."""

from __future__ import annotations

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 640, 200, 40, 28, 12


def _nice_max(value: float) -> float:
    if value <= 5:
        return 5
    magnitude = 10 ** (len(str(int(value))) - 1)
    return float(-(-value // magnitude) * magnitude)


def bar_chart(points: list[tuple[str, float]], *, title: str, color: str = "#0b5cad",
              label_every: int = 1) -> SafeString:
    """Bars with a y axis, x labels every `label_every` bars, and a <title> per bar."""
    top = _nice_max(max((value for _, value in points), default=0))
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / max(len(points), 1)
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>"]
    for tick in range(5):
        value = top * tick / 4
        y = PAD_TOP + plot_h - plot_h * tick / 4
        parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#e0e5ea"/>')
        parts.append(f'<text x="{PAD_LEFT - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#5b6875">{value:g}</text>')
    for index, (label, value) in enumerate(points):
        height = plot_h * value / top if top else 0
        x = PAD_LEFT + index * step + step * 0.15
        y = PAD_TOP + plot_h - height
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.7:.1f}" '
                     f'height="{height:.1f}" fill="{color}"><title>{escape(label)}: '
                     f"{value:g}</title></rect>")
        if index % label_every == 0 or index == len(points) - 1:
            short = label[5:] if len(label) == 10 and label[4] == "-" else label
            parts.append(f'<text x="{x + step * 0.35:.1f}" y="{HEIGHT - 10}" font-size="10" '
                         f'text-anchor="middle" fill="#5b6875">{escape(short)}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every value above is escaped or numeric


def line_chart(points: list[tuple[str, float]], *, title: str,
               color: str = "#a11d2b", label_every: int = 5) -> SafeString:
    top = _nice_max(max((value for _, value in points), default=0))
    # Room on the right for half of the last x label, centred on the last point.
    plot_w, plot_h = WIDTH - PAD_LEFT - 24, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / max(len(points) - 1, 1)
    coords = [(PAD_LEFT + index * step, PAD_TOP + plot_h - (plot_h * value / top if top else 0))
              for index, (_, value) in enumerate(points)]
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>"]
    for tick in range(5):
        y = PAD_TOP + plot_h - plot_h * tick / 4
        parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#e0e5ea"/>')
        parts.append(f'<text x="{PAD_LEFT - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#5b6875">{top * tick / 4:g}</text>')
    if coords:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                     'stroke-width="2"/>')
    for index, ((label, value), (x, y)) in enumerate(zip(points, coords, strict=True)):
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}">'
                     f"<title>{escape(label)}: {value:g}</title></circle>")
        if index % label_every == 0 or index == len(points) - 1:
            short = label[5:] if len(label) == 10 and label[4] == "-" else label
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 10}" font-size="10" '
                         f'text-anchor="middle" fill="#5b6875">{escape(short)}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every value above is escaped or numeric
