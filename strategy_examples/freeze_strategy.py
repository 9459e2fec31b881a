"""A complete user strategy that freezes and scales through update masks: a seeded share
of each hidden layer's units is frozen from the first step on (their incoming weights and
bias, and the optimizer state of both, never move), and the rest learn at ``scale`` times
the optimizer's step.

    lifelong run configs/split_digits_ewc.yaml strategy.name=strategy_examples.freeze_strategy:FreezeUnits strategy.fraction=0.9
"""

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.platform.config import StrategyConfig
from lifelong.platform.errors import require
from lifelong.strategies.base import Strategy
from lifelong.strategies.units import hidden_layers
from lifelong.streams.scenarios import TaskInfo


@dataclass
class FreezeConfig(StrategyConfig):
    fraction: float = 0.5  # of each hidden layer's units, frozen
    scale: float = 1.0  # update scale of the units that learn, in (0, 1]


class FreezeUnits(Strategy):
    name = "freeze_units"
    description = "freeze a seeded share of hidden units; scale the others' updates"
    Config = FreezeConfig

    @classmethod
    def check_config(cls, config: FreezeConfig) -> None:  # type: ignore[override]
        require(0 <= config.fraction <= 1, "strategy.fraction", f"must be in [0, 1], got {config.fraction}")
        require(0 < config.scale <= 1, "strategy.scale", f"must be in (0, 1], got {config.scale}")

    def wrap_model(self, model: nn.Module) -> nn.Module:
        self.layers = hidden_layers(model, "freeze_units")
        return model

    def on_task_start(self, task: TaskInfo) -> None:
        if task.index > 0:
            return  # masks hold until changed (and checkpoints carry them)
        g = torch.Generator().manual_seed(self.ctx.seed)  # the same units on every rank
        for layer in self.layers:
            frozen = torch.randperm(layer.n_units, generator=g)[:round(self.config.fraction * layer.n_units)]
            rows = torch.full((layer.n_units,), self.config.scale)
            rows[frozen] = 0.0  # 0: frozen; a value in (0, 1]: that share of the step
            self.ctx.update_mask(layer.in_weight(), rows)  # one value per unit = per row
            self.ctx.update_mask(layer.in_bias(), rows)
