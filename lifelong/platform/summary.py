"""The accuracy matrix at the end of a run, as the terminal can show it.

A short stream gets the whole matrix. A long one (hundreds of tasks) would print a table of
hundreds of rows whose columns collapse, so it gets a view that fits the console's width:
the matrix's corners, and sparklines of the new-task accuracy R[i][i] (the loss-of-plasticity
curve) and of the final row, with their first and last tasks' means. The whole matrix stays
in MLflow (``accuracy_matrix.json``). ACC, BWT, FWT and forgetting are printed below either
view by the CLI. Entries that were not evaluated (NaN) show as ``-``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from rich import box
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

FULL_UP_TO = 8  # tasks: a stream this short gets its whole matrix
CORNER = 3  # long streams: first and last rows and columns shown
EDGE = 10  # long streams: new-task accuracy averaged over the first and last this many tasks
BARS = "▁▂▃▄▅▆▇█"


def render(R: Sequence[Sequence[float]], init: Sequence[float], width: int = 80) -> RenderableType:
    """The summary for a console ``width`` columns wide."""
    if len(init) <= FULL_UP_TO:
        return full_table(R, init)
    return compact(R, init, width)


def full_table(R: Sequence[Sequence[float]], init: Sequence[float]) -> Group:
    # The legend is a line of its own: as the table's title it wrapped to the table's width.
    legend = Text("accuracy matrix R[i][j]: row i after training task i, column j on task j")
    table = Table()
    table.add_column("after", justify="right")
    for j in range(len(init)):
        table.add_column(f"task {j}", justify="right")
    table.add_row("init", *(_cell(a) for a in init), style="dim")
    for i, row in enumerate(R):
        table.add_row(str(i), *(f"[bold]{_cell(a)}[/]" if i == j else _cell(a) for j, a in enumerate(row)))
    return Group(legend, table)


def compact(R: Sequence[Sequence[float]], init: Sequence[float], width: int = 80) -> Group:
    n = len(init)
    M = np.asarray(R, dtype=float).reshape(len(R), n)
    parts: list[RenderableType] = [corners(M, init)]
    if len(M):
        diagonal = np.diag(M)
        first, last = _nanmean(diagonal[:EDGE]), _nanmean(diagonal[-EDGE:])
        parts.append(Text(f"new-task accuracy R[i][i]: first {min(EDGE, len(diagonal))} tasks "
                          f"{_cell(first)}, last {min(EDGE, len(diagonal))} {_cell(last)}"))
        labels = ["  R[i][i] over i", f"  final row R[{len(M) - 1}][j]"]
        pad = max(len(label) for label in labels)
        parts.append(_spark_line(labels[0].ljust(pad), diagonal, width))
        parts.append(_spark_line(labels[1].ljust(pad), M[-1], width))
    parts.append(Text("the whole matrix: accuracy_matrix.json in the MLflow run", style="dim"))
    return Group(*parts)


def corners(M: np.ndarray, init: Sequence[float]) -> Table:
    """The first and last ``CORNER`` rows and columns of the matrix, with ellipses between."""
    n = len(init)
    cols = _ends(n)
    table = Table(title=escape(f"accuracy matrix R[i][j], {n} tasks (corners)"), box=box.SIMPLE_HEAD,
                  padding=(0, 1), title_justify="left")
    table.add_column("after", justify="right")
    for j in cols:
        table.add_column("…" if j is None else f"t{j}", justify="right")
    table.add_row("init", *("…" if j is None else _cell(init[j]) for j in cols), style="dim")
    evaluated = [i for i in range(len(M)) if not np.isnan(M[i]).all()]  # eval.every skips rows
    for i in (evaluated[k] if k is not None else None for k in _ends(len(evaluated))):
        if i is None:
            table.add_row("…", *("" for _ in cols))
            continue
        table.add_row(str(i), *("…" if j is None else f"[bold]{_cell(M[i, j])}[/]" if i == j
                                else _cell(M[i, j]) for j in cols))
    return table


def sparkline(values: np.ndarray, cells: int) -> str:
    """``values`` averaged into at most ``cells`` bins, each a bar scaled from their min to max;
    a bin with nothing evaluated is a space."""
    values = np.asarray(values, dtype=float)
    if not len(values) or cells < 1:
        return ""
    bins = [b for b in np.array_split(values, min(cells, len(values)))]
    means = np.array([_nanmean(b) for b in bins])
    known = means[~np.isnan(means)]
    if not len(known):
        return " " * len(bins)
    low, high = known.min(), known.max()
    span = high - low if high > low else 1.0
    return "".join(" " if math.isnan(m) else BARS[min(int((m - low) / span * len(BARS)), len(BARS) - 1)]
                   for m in means)


def _spark_line(label: str, values: np.ndarray, width: int) -> Text:
    known = values[~np.isnan(values)]
    scale = f" {known.min():.3f}..{known.max():.3f}" if len(known) else ""
    cells = max(width - len(label) - len(scale) - 2, 8)
    return Text(f"{label} ") + Text(sparkline(values, cells), style="cyan") + Text(scale, style="dim")


def _ends(n: int) -> list:
    """Indices 0..n-1, or the first and last ``CORNER`` of them with ``None`` between."""
    if n <= 2 * CORNER + 1:
        return list(range(n))
    return [*range(CORNER), None, *range(n - CORNER, n)]


def _nanmean(values: np.ndarray) -> float:
    known = np.asarray(values, dtype=float)
    known = known[~np.isnan(known)]
    return float(known.mean()) if len(known) else math.nan


def _cell(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"
