"""Continual-learning summaries of an accuracy matrix.

``R[i][j]`` is accuracy on task j after training task i (0-based here; DESIGN.md's
formulas are 1-based), ``b[j]`` accuracy on task j at initialisation. ``R`` may hold
only the rows trained so far: every function summarises "after task i = len(R)-1".
Variants, as libraries disagree:
- ACC, BWT, FWT: Lopez-Paz & Ranzato (GEM, 2017).
- forgetting: Chaudhry et al. (RWalk, 2018), the max over *earlier* rows.
A summary that is undefined so far (BWT after one task) is ``None``, never 0.

Entries that were not evaluated are NaN (``eval.tasks=seen``: tasks not trained yet;
``eval.every=k``: whole rows between evaluations). Summaries use the entries they have:
BWT and forgetting average over the earlier tasks whose needed entries were evaluated,
and FWT, which needs every task evaluated before it is trained, is ``None`` without them.
The last row must be evaluated (a run always evaluates after its last task).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

Matrix = Sequence[Sequence[float]] | np.ndarray


def average_accuracy(R: Matrix) -> Optional[float]:
    """ACC = mean_{j<=i} R[i][j]."""
    R = np.asarray(R, dtype=float)
    i = len(R) - 1
    return _mean(R[i, : i + 1])


def backward_transfer(R: Matrix) -> Optional[float]:
    """BWT = mean_{j<i} (R[i][j] - R[j][j]); negative means forgetting."""
    R = np.asarray(R, dtype=float)
    i = len(R) - 1
    if i < 1:
        return None
    return _mean(R[i, :i] - np.diag(R)[:i])


def forward_transfer(R: Matrix, b: Sequence[float]) -> Optional[float]:
    """FWT = mean_{1<=j<=i} (R[j-1][j] - b[j]): zero-shot gain on a task before training it."""
    R = np.asarray(R, dtype=float)
    i = len(R) - 1
    if i < 1:
        return None
    gains = np.array([R[j - 1, j] - b[j] for j in range(1, i + 1)])
    return None if np.isnan(gains).any() else float(gains.mean())


def forgetting(R: Matrix) -> Optional[float]:
    """mean_{j<i} (max_{l<i} R[l][j] - R[i][j]) (Chaudhry et al.)."""
    R = np.asarray(R, dtype=float)
    i = len(R) - 1
    if i < 1:
        return None
    earlier = R[:i, :i]
    known = ~np.isnan(earlier).all(axis=0)  # task j was evaluated at some earlier row
    best = np.full(i, np.nan)
    best[known] = np.nanmax(earlier[:, known], axis=0)
    return _mean(best - R[i, :i])


def _mean(values: np.ndarray) -> Optional[float]:
    """The mean of the evaluated (non-NaN) values; None if there are none."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def summarize(R: Matrix, b: Sequence[float]) -> dict[str, float]:
    """All defined summaries after the last row of ``R``, keyed by metric name."""
    values = {
        "acc": average_accuracy(R),
        "bwt": backward_transfer(R),
        "fwt": forward_transfer(R, b),
        "forgetting": forgetting(R),
    }
    return {k: v for k, v in values.items() if v is not None}
