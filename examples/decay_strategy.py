"""A complete user strategy: pull weights towards zero, as a gradient edit.

    lifelong run configs/split_digits_ewc.yaml strategy.name=examples.decay_strategy:Decay strategy.strength=0.001
"""

from dataclasses import dataclass

import torch

from lifelong.platform.config import StrategyConfig
from lifelong.strategies.base import Strategy


@dataclass
class DecayConfig(StrategyConfig):
    strength: float = 1e-4


class Decay(Strategy):
    name = "decay"
    description = "L2 pull towards zero, applied to the gradient"
    Config = DecayConfig

    def transform_grads(self) -> dict[str, float]:
        with torch.no_grad(), self.ctx.editable_grads() as grads:
            params = self.ctx.full_params()
            for name, g in grads.items():
                g.add_(params[name], alpha=self.config.strength)
        return {}
