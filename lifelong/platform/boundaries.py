"""When task-boundary work happens, and how long each part takes.

Long streams (hundreds of short tasks) cannot afford every piece of boundary work at every
boundary: evaluation and checkpoints follow ``eval.every`` / ``engine.checkpoint_every``,
plots are re-rendered about ``PLOT_RENDERS`` times a run, their figures only while drawing
them has taken under ``FIGURE_SHARE`` of the run (on 2 cores a background render takes
its time from training), and always after the last task. ``BoundaryClock`` splits each
boundary into phases so every run shows where its boundary time went.
"""

from __future__ import annotations

import time

PLOT_RENDERS = 20  # at most about this many plot renders per run
FIGURE_SHARE = 0.05  # of a run's time, at most, drawing its figures (the last always drawn)


def due_after(task: int, n_tasks: int, every: int) -> bool:
    """Evaluate (or checkpoint) after this task? After every ``every``-th, and always after the last."""
    return (task + 1) % every == 0 or task + 1 == n_tasks


class BoundaryClock:
    """Seconds per phase of one task boundary (probe, strategy, eval, tracking, checkpoint),
    logged as ``time/boundary/<phase>_seconds`` so every run shows where boundaries go."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def plots_due(task: int, n_tasks: int, renders: int = PLOT_RENDERS) -> bool:
    """Re-render the plots after this task? After every task on short streams; on long ones
    (hundreds of short tasks) about ``renders`` times, always including the last task."""
    return (task + 1) % max(1, n_tasks // renders) == 0 or task + 1 == n_tasks


def figures_due(last: bool, drawing_seconds: float, elapsed_seconds: float) -> bool:
    """Draw the figures at this (plot) boundary? Always after the last task; before it, only
    while drawing so far stays under ``FIGURE_SHARE`` of the time the run has taken."""
    return last or drawing_seconds <= FIGURE_SHARE * elapsed_seconds
