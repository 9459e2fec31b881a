"""Bookkeeping of per-row task inference, shared by the strategies whose model infers each
test row's context (``Contextual.INFER``): what evaluation expects, and what it reported."""

from __future__ import annotations

from typing import Optional

from lifelong.strategies.base import Matrix


def expected_contexts(trained: list[int], n_tasks: int) -> list[int]:
    """The context each task trained in, by task; -1 for tasks not trained yet."""
    return trained + [-1] * (n_tasks - len(trained))


def record(rows: list[list[float]], accuracy: list[float], trained: list[int]) -> None:
    """Keep an evaluation's per-task shares, unless no context is trained yet (the
    evaluation before the first task)."""
    if trained:
        rows.append(list(accuracy))


def latest_mean(rows: list[list[float]], trained: list[int]) -> Optional[float]:
    """The last evaluation's share, averaged over the trained tasks."""
    if not rows or not trained:
        return None
    shares = rows[-1][:len(trained)]
    return sum(shares) / len(shares)


def inference_matrix(rows: list[list[float]], trained: list[int]) -> Matrix:
    """Evaluations x trained tasks (tasks not yet evaluated at an evaluation read 0)."""
    n = len(trained)
    return Matrix([row[:n] + [0.0] * (n - len(row[:n])) for row in rows], "evaluation after task", "task",
                  "share of test rows whose task was inferred right")
