"""A tiny out-of-tree strategy, loaded by dotted path in test_strategies.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lifelong.platform.config import StrategyConfig
from lifelong.strategies.base import Strategy


@dataclass
class RecorderConfig(StrategyConfig):
    alpha: float = 1.0
    tag: str = "plain"


class MyStrategy(Strategy):
    """Records the order in which the platform calls its hooks."""

    name = "recorder"
    description = "records hook calls (test fixture)"
    Config = RecorderConfig

    def __init__(self, config: RecorderConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.calls: list[tuple[str, int]] = []

    def wrap_model(self, model):  # type: ignore[no-untyped-def]
        self.calls.append(("wrap_model", -1))
        return model

    def on_task_start(self, task):  # type: ignore[no-untyped-def]
        self.calls.append(("on_task_start", task.index))

    def augment_batch(self, batch):  # type: ignore[no-untyped-def]
        self.calls.append(("augment_batch", int(batch.task[0])))
        return batch

    def transform_grads(self) -> dict[str, float]:
        self.calls.append(("transform_grads", -1))
        return {"alpha": self.config.alpha}

    def after_step(self, batch):  # type: ignore[no-untyped-def]
        self.calls.append(("after_step", int(batch.task[0])))

    def on_task_end(self, task, data):  # type: ignore[no-untyped-def]
        self.calls.append(("on_task_end", task.index))


class NotAStrategy:
    """Has the right shape of name, but is not a Strategy subclass."""

    name = "impostor"


def not_a_class() -> None:
    """A function is not a strategy either."""
