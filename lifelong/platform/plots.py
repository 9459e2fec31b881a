"""Pictures people would rather look at than read: accuracy heatmap and curves."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def accuracy_heatmap(R: Sequence[Sequence[float]], title: str = "") -> Figure:
    """R[i][j] as a grid: rows = after training task i, columns = evaluated on task j."""
    R = np.asarray(R, dtype=float)
    rows, cols = R.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * cols, 1.0 + 0.6 * rows), dpi=110)
    image = ax.imshow(R, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(rows):
        for j in range(cols):
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


def accuracy_over_time(R: Sequence[Sequence[float]], init: Sequence[float], title: str = "") -> Figure:
    """One line per task: its accuracy after each training task (dashed before it is trained)."""
    R = np.asarray(R, dtype=float)
    rows, cols = R.shape
    fig, ax = plt.subplots(figsize=(6.5, 4.0), dpi=110)
    xs = np.arange(-1, rows)
    for j in range(cols):
        series = np.concatenate([[init[j]], R[:, j]])
        line, = ax.plot(xs[: j + 2], series[: j + 2], linestyle="--", alpha=0.5)
        ax.plot(xs[j + 1:], series[j + 1:], marker="o", color=line.get_color(), label=f"task {j}")
    ax.set_xticks(xs, ["init"] + [str(i) for i in range(rows)])
    ax.set_xlabel("after training task")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title or "accuracy on each task over the stream")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
