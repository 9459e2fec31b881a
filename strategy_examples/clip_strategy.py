"""A complete user strategy: clip each parameter's gradient to a maximum norm.

    lifelong run configs/split_digits_ewc.yaml strategy.name=strategy_examples.clip_strategy:ClipGrads strategy.max_norm=0.5
"""

from dataclasses import dataclass

import torch

from lifelong.platform.config import StrategyConfig
from lifelong.strategies.base import Strategy


@dataclass
class ClipConfig(StrategyConfig):
    max_norm: float = 1.0


class ClipGrads(Strategy):
    name = "clip"
    description = "scale each parameter's gradient down to at most max_norm"
    Config = ClipConfig

    def transform_grads(self) -> dict[str, float]:
        clipped = 0
        with torch.no_grad(), self.ctx.editable_grads() as grads:
            for g in grads.values():
                norm = float(g.norm())
                if norm > self.config.max_norm:
                    g.mul_(self.config.max_norm / norm)
                    clipped += 1
        return {"clipped_params": clipped}
