"""Joint training: at task t, train on the union of tasks 0..t (an upper bound, not CL)."""

from __future__ import annotations

from typing import Any

from lifelong.strategies.base import Strategy, Support
from lifelong.streams.batches import Samples
from lifelong.streams.scenarios import Task


class Joint(Strategy):
    name = "joint"
    description = "train on the union of all tasks seen so far (upper bound)"
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.seen: dict[int, Samples] = {}

    def train_data(self, task: Task, data: Samples) -> Samples:
        self.seen[task.index] = data
        return Samples.cat([self.seen[t] for t in sorted(self.seen)])

    def state_dict(self) -> dict[str, Any]:
        return {"seen": {t: (s.x, s.y, s.task) for t, s in self.seen.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = {int(t): Samples(*parts) for t, parts in state["seen"].items()}
