"""The end-of-run summary: the whole matrix for short streams, a view that fits the terminal
for long ones (``platform/summary.py``)."""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console

from lifelong.platform.summary import render, sparkline


def printed(R, init, width: int = 80) -> list[str]:  # type: ignore[no-untyped-def]
    console = Console(width=width, record=True, color_system=None)
    console.print(render(R, init, console.width))
    return console.export_text().splitlines()


def long_stream(n: int = 300, every: int = 1) -> tuple[list, list]:
    rng = np.random.default_rng(0)
    R = 0.7 + 0.25 * rng.random((n, n))
    R[np.arange(n), np.arange(n)] = np.linspace(0.95, 0.80, n)  # plasticity fading
    R[[i for i in range(n - 1) if (i + 1) % every]] = math.nan
    return R.tolist(), (0.1 * rng.random(n)).tolist()


def test_300_tasks_fit_in_80_columns_with_corners_and_new_task_accuracy():
    lines = printed(*long_stream())
    assert max(len(line) for line in lines) <= 80 and len(lines) <= 24
    text = "\n".join(lines)
    assert "300 tasks" in text and "t299" in text and "…" in text
    assert "new-task accuracy R[i][i]: first 10 tasks 0.948, last 10 0.802" in text
    assert any(line.lstrip().startswith("299 ") and "0.800" in line for line in lines)  # last diagonal
    assert "accuracy_matrix.json" in text


def test_rows_that_were_not_evaluated_are_skipped_and_missing_entries_are_dashes():
    R, init = long_stream(every=7)
    lines = printed(R, init)
    rows = [line.split()[0] for line in lines if line.strip() and line.split()[0].isdigit()]
    assert rows == ["6", "13", "20", "286", "293", "299"]
    assert max(len(line) for line in lines) <= 80
    seen = [[a if j <= i else math.nan for j, a in enumerate(r)] for i, r in enumerate(long_stream()[0])]
    assert any(" - " in line for line in printed(seen, init))


def test_short_streams_keep_the_whole_table():
    R = [[0.9, 0.1, 0.2], [0.8, 0.95, 0.3], [0.7, 0.85, 0.9]]
    text = "\n".join(printed(R, [0.1, 0.1, 0.1], width=120))
    assert "task 2" in text and "0.850" in text and "init" in text


def test_sparkline_bins_to_the_width_and_leaves_gaps_for_missing_values():
    rising = sparkline(np.linspace(0, 1, 300), 10)
    assert len(rising) == 10 and rising[0] == "▁" and rising[-1] == "█" and list(rising) == sorted(rising)
    assert sparkline(np.array([0.5, math.nan, 1.0]), 10) == "▁ █"
