"""Pictures people would rather look at than read: accuracy heatmap and curves, plasticity probes.

Entries of R that were not evaluated (NaN: ``eval.tasks=seen``, ``eval.every``) are grey
cells in the heatmap and left out of the curves, which join the evaluated points."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lifelong.metrics.plasticity import MEASURES  # noqa: E402

ANNOTATE_UP_TO = 12  # tasks: above this, heatmaps lose their numbers and curves their legend


def accuracy_heatmap(R: Sequence[Sequence[float]], title: str = "") -> Figure:
    """R[i][j] as a grid: rows = after training task i, columns = evaluated on task j."""
    R = np.asarray(R, dtype=float)
    rows, cols = R.shape
    scale = min(1.0, ANNOTATE_UP_TO / max(cols, 1))
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * cols * scale, 1.0 + 0.6 * rows * scale), dpi=110)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")  # not evaluated: grey
    image = ax.imshow(R, vmin=0.0, vmax=1.0, cmap=cmap)
    if cols <= ANNOTATE_UP_TO:  # beyond that, numbers would be unreadable: colours only
        for i in range(rows):
            for j in range(cols):
                if np.isnan(R[i, j]):
                    continue
                ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if R[i, j] < 0.6 else "black")
        ax.set_xticks(range(cols))
        ax.set_yticks(range(rows))
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title or "accuracy matrix R[i][j]")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def matrix_heatmap(values: Sequence[Sequence[float]], row_label: str, column_label: str,
                   title: str = "") -> Figure:
    """A strategy's reported matrix (``Strategy.matrices``), e.g. steps per task and context."""
    M = np.asarray(values, dtype=float).reshape(len(values), -1)
    rows, cols = M.shape
    fig, ax = plt.subplots(figsize=(2.0 + 0.35 * min(cols, 60), 1.5 + 0.3 * min(rows, 60)), dpi=110)
    image = ax.imshow(M, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel(column_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def new_task_accuracy(R: Sequence[Sequence[float]], online: Sequence[float], title: str = "") -> Figure:
    """The loss-of-plasticity curve: how well each new task is learned, over the task index.
    Test accuracy R[i][i] right after training task i, and (if given) the online accuracy,
    on task i's training batches before each update."""
    R = np.asarray(R, dtype=float)
    tasks = np.arange(len(R))
    diagonal = np.diag(R) if len(R) else np.zeros(0)
    shown = ~np.isnan(diagonal)
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=110)
    ax.plot(tasks[shown], diagonal[shown], marker="o", markersize=3, label="test, after training it")
    if len(online):
        ax.plot(tasks[:len(online)], online, marker=".", markersize=3, alpha=0.8,
                label="online, while training it")
    ax.set_xlabel("task index")
    ax.set_ylabel("accuracy on the new task")
    ax.set_title(title or "new-task accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_over_time(R: Sequence[Sequence[float]], init: Sequence[float], title: str = "") -> Figure:
    """One line per task: its accuracy after each training task (dashed before it is trained)."""
    R = np.asarray(R, dtype=float)
    rows, cols = R.shape
    fig, ax = plt.subplots(figsize=(6.5, 4.0), dpi=110)
    xs = np.arange(-1, rows)
    shown = np.unique(np.linspace(0, cols - 1, min(cols, ANNOTATE_UP_TO)).round().astype(int))
    for j in shown:  # on long streams, an evenly spaced selection of tasks
        series = np.concatenate([[init[j]], R[:, j]])
        known = ~np.isnan(series)
        before, after = known.copy(), known.copy()
        before[j + 2:], after[: j + 1] = False, False
        line, = ax.plot(xs[before], series[before], linestyle="--", alpha=0.5)
        ax.plot(xs[after], series[after], marker="o", color=line.get_color(), label=f"task {j}")
    if rows <= ANNOTATE_UP_TO:
        ax.set_xticks(xs, ["init"] + [str(i) for i in range(rows)])
    ax.set_xlabel("after training task")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title or "accuracy on each task over the stream")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


_FRACTIONS = ("dead", "dormant", "rarely_active")
_YLABELS = {"effective_rank": "effective rank", "stable_rank": "stable rank (99% of sigma)",
            "mean_abs_weight": "mean |w|", "grad_norm": "gradient L2 norm"}


def plasticity_curves(history: Sequence[tuple[int, dict[str, float]]], task_starts: Sequence[int],
                      title: str = "") -> Figure:
    """One panel per measure, one line per layer, against the global step.

    ``history`` holds (step, values) with keys "plasticity/<layer>/<measure>"; dotted grey
    lines mark the steps where a new task began, so a drop can be read against the stream.
    """
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {m: {} for m in MEASURES}
    for step, values in sorted(history, key=lambda item: item[0]):
        for key, value in values.items():
            parts = key.split("/")
            if len(parts) != 3 or parts[0] != "plasticity" or parts[2] not in series:
                continue
            xs, ys = series[parts[2]].setdefault(parts[1], ([], []))
            xs.append(step)
            ys.append(float(value))
    layers = sorted({layer for by_layer in series.values() for layer in by_layer})
    if not layers:
        fig, ax = plt.subplots(figsize=(6.5, 3.0), dpi=110)
        ax.text(0.5, 0.5, "no probes yet", ha="center", va="center", fontsize=12)
        ax.set_axis_off()
        ax.set_title(title or "plasticity probes")
        return fig
    fig, axes = plt.subplots(2, 4, figsize=(14.0, 6.0), dpi=110)
    colors = {layer: f"C{i % 10}" for i, layer in enumerate(layers)}
    for ax, measure in zip(axes.flat, MEASURES):
        for layer in layers:
            if layer in series[measure]:
                xs, ys = series[measure][layer]
                ax.plot(xs, ys, marker="o" if len(xs) == 1 else None, markersize=3,
                        color=colors[layer], label=layer)
        if len(task_starts):  # one collection, not an artist per task: hundreds of tasks stay fast
            ax.vlines(task_starts, 0, 1, transform=ax.get_xaxis_transform(), colors="grey",
                      linestyles=":", linewidth=1.0 if len(task_starts) <= 50 else 0.3)
        values = [y for xs, ys in series[measure].values() for y in ys if np.isfinite(y)]
        if measure == "grad_norm" and values and min(values) > 0:
            ax.set_yscale("log")
        if measure in _FRACTIONS:
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(measure, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("fraction of units" if measure in _FRACTIONS else _YLABELS[measure], fontsize=8)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3)
    legend_ax = axes.flat[len(MEASURES)]
    legend_ax.set_axis_off()
    handles = [plt.Line2D([], [], color=colors[layer], label=layer) for layer in layers]
    handles.append(plt.Line2D([], [], color="grey", linestyle=":", label="task start"))
    legend_ax.legend(handles=handles, loc="center", fontsize=8, title="layer")
    fig.suptitle(title or "plasticity probes per layer")
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
