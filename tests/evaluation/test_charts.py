"""The evaluation charts: reference labels stay readable when published figures are close."""

from __future__ import annotations

import re

from evaluation.charts import LABEL_GAP, REFERENCE_FIGURES, Series, label_positions, line_chart


def test_close_reference_figures_get_labels_apart_and_lines_at_their_values() -> None:
    svg = str(line_chart("PubMedQA accuracy", [Series("model", [("run 1", 0.55)])],
                         REFERENCE_FIGURES["pubmedqa"]))
    label_ys = sorted(float(y) for y in re.findall(r'<text x="\d+" y="([\d.]+)" font-size="10" '
                                                   r'fill="#8a5300"', svg))
    assert len(label_ys) == 4
    assert all(b - a >= LABEL_GAP - 0.05 for a, b in zip(label_ys, label_ys[1:], strict=False))
    # 70.6% and 71.6% are 2 px apart as lines; their dashed lines stay where the values are.
    line_ys = sorted(float(y) for y in re.findall(r'y1="([\d.]+)" y2="[\d.]+" stroke="#8a5300"',
                                                  svg))
    assert line_ys[1] - line_ys[0] < 3


def test_labels_pushed_past_the_bottom_move_up_as_a_column() -> None:
    placed = label_positions([219.0, 219.5, 220.0])
    assert placed == sorted(placed) and placed[-1] <= 220.0
    assert all(b - a >= LABEL_GAP for a, b in zip(placed, placed[1:], strict=False))
