"""Joint training: at task t, train on the union of tasks 0..t (an upper bound, not CL)."""

from __future__ import annotations

from typing import Sequence

from lifelong.strategies.base import Strategy, Support


class Joint(Strategy):
    name = "joint"
    description = "train on the union of all tasks seen so far (upper bound)"
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py

    @classmethod
    def train_on(cls, task_index: int) -> Sequence[int]:
        return list(range(task_index + 1))
