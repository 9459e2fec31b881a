"""When task-boundary work happens, and how long each part takes.

Long streams (hundreds of short tasks) cannot afford every piece of boundary work at every
boundary: evaluation and checkpoints follow ``eval.every`` / ``engine.checkpoint_every``,
plots are re-rendered about ``PLOT_RENDERS`` times a run. ``BoundaryClock`` splits each
boundary into phases so every run shows where its boundary time went.
"""

from __future__ import annotations

import time

PLOT_RENDERS = 20  # at most about this many plot renders per run


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
