"""L2 regularisation towards zero, a plasticity baseline (Dohare et al. 2024 use it against
loss of plasticity: it keeps weights small, so units stay responsive).

Adds ``lam * theta`` to the full gradient before the optimizer step, i.e. descends on
task loss + lam/2 * ||theta||^2. With Adam this is L2 regularisation, not AdamW's
decoupled decay (use ``optim.weight_decay`` for the optimizer's own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lifelong.platform.config import StrategyConfig
from lifelong.platform.errors import require
from lifelong.strategies.base import Strategy, Support


@dataclass
class L2Config(StrategyConfig):
    lam: float = 1e-4


class L2(Strategy):
    name = "l2"
    description = "L2 regularisation towards zero (plasticity baseline)"
    Config = L2Config
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py

    @classmethod
    def check_config(cls, config: L2Config) -> None:  # type: ignore[override]
        require(config.lam >= 0, "strategy.lam", f"must be >= 0, got {config.lam}")

    def __init__(self, config: L2Config, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.check_config(config)

    def transform_grads(self) -> dict[str, float]:
        with torch.no_grad(), self.ctx.editable_grads() as grads:
            params = self.ctx.full_params()
            for name, g in grads.items():
                g.add_(params[name], alpha=self.config.lam)
        return {}
