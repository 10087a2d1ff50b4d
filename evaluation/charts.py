"""Server-side SVG charts (CSP allows no inline script and no CDN): accuracy over time and
accuracy per subset, with published reference figures as dashed lines. Values are 0..1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 210, 16, 40
PALETTE = ("#0b5cad", "#c2410c", "#1e6b35", "#7c3aed", "#a11d2b", "#0e7490")

# Published figures from the data README (for comparison, not targets).
REFERENCE_FIGURES: dict[str, list[tuple[str, float]]] = {
    "pubmedqa": [("GPT-4 + MedRAG", 0.706), ("Llama-3-70B + MedRAG", 0.716),
                 ("GPT-3.5 + MedRAG", 0.674), ("GPT-4, no retrieval", 0.396)],
    "medmcqa": [("GPT-4 + MedRAG", 0.667)],
    "mmlu": [("GPT-4 + MedRAG", 0.872)],
}


@dataclass
class Series:
    label: str
    points: list[tuple[str, float]] = field(default_factory=list)  # (x label, value)


def _y(value: float) -> float:
    return TOP + (1 - max(0.0, min(1.0, value))) * (HEIGHT - TOP - BOTTOM)


def _frame(title: str) -> list[str]:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'role="img" aria-label="{escape(title)}" class="chart">',
             f"<title>{escape(title)}</title>"]
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        y = _y(tick)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#e3e8ee"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#5b6875">{tick:.0%}</text>')
    return parts


LABEL_GAP = 12  # px between reference labels, so close figures (70.6%, 71.6%) stay readable


def label_positions(ys: Sequence[float], gap: float = LABEL_GAP) -> list[float]:
    """Label heights near `ys`, each at least `gap` from the next, inside the plot area."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed: dict[int, float] = {}
    previous = TOP - gap
    for i in order:
        placed[i] = max(ys[i], previous + gap)
        previous = placed[i]
    overflow = previous - (HEIGHT - BOTTOM)
    if overflow > 0:  # pushed below the plot: move the whole column up
        placed = {i: y - overflow for i, y in placed.items()}
    return [placed[i] for i in range(len(ys))]


def _references(parts: list[str], references: Sequence[tuple[str, float]]) -> None:
    heights = label_positions([_y(value) for _, value in references])
    for (label, value), label_y in zip(references, heights, strict=True):
        y = _y(value)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#8a5300" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 4}" y="{label_y + 4:.1f}" font-size="10" '
                     f'fill="#8a5300">{escape(label)} {value:.1%}</text>')


def line_chart(title: str, series: Sequence[Series],
               references: Sequence[tuple[str, float]] = ()) -> SafeString:
    parts = _frame(title)
    _references(parts, references)
    longest = max((len(s.points) for s in series), default=0)
    step = (WIDTH - LEFT - RIGHT) / max(longest - 1, 1)
    for number, line in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        coordinates = [(LEFT + i * step, _y(value)) for i, (_x, value) in
                       enumerate(line.points)]
        if len(coordinates) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coordinates)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                         'stroke-width="2"/>')
        for (x, y), (x_label, value) in zip(coordinates, line.points, strict=True):
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}">'
                         f"<title>{escape(line.label)}, {escape(x_label)}: {value:.1%}</title>"
                         "</circle>")
        legend_y = HEIGHT - BOTTOM + 16 + 12 * (number // 3)
        legend_x = LEFT + 190 * (number % 3)
        parts.append(f'<rect x="{legend_x}" y="{legend_y - 8}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{legend_x + 14}" y="{legend_y + 1}" '
                     f'font-size="11">{escape(line.label[:28])}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every label is escaped above


def bar_chart(title: str, bars: Sequence[tuple[str, float, float, float]],
              references: Sequence[tuple[str, float]] = ()) -> SafeString:
    """bars: (label, value, ci_low, ci_high); the interval is drawn as a whisker."""
    parts = _frame(title)
    slot = (WIDTH - LEFT - RIGHT) / max(len(bars), 1)
    for number, (label, value, low, high) in enumerate(bars):
        x = LEFT + number * slot + slot * 0.2
        width = slot * 0.6
        parts.append(f'<rect x="{x:.1f}" y="{_y(value):.1f}" width="{width:.1f}" '
                     f'height="{_y(0) - _y(value):.1f}" fill="{PALETTE[number % 2]}">'
                     f"<title>{escape(label)}: {value:.1%} (95% CI {low:.1%}-{high:.1%})"
                     "</title></rect>")
        middle = x + width / 2
        parts.append(f'<line x1="{middle:.1f}" x2="{middle:.1f}" y1="{_y(low):.1f}" '
                     f'y2="{_y(high):.1f}" stroke="#1d2733"/>')
        parts.append(f'<text x="{middle:.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="11" '
                     f'text-anchor="middle">{escape(label[:22])}</text>')
    _references(parts, references)
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every label is escaped above
