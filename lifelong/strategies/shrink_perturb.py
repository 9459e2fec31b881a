"""Shrink and perturb (Ash & Adams 2020), applied every step as in Dohare et al. 2024's
loss-of-plasticity baselines: theta <- (1 - shrink) * theta + noise_std * N(0, I).

The shrink keeps weights small; the noise keeps injecting the variability that
initialisation gave once. The noise comes from a generator seeded alike on every rank and
is drawn for whole parameters in name order, so every rank makes the same edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lifelong.platform.config import StrategyConfig
from lifelong.platform.errors import require
from lifelong.strategies.base import Strategy, Support
from lifelong.streams.batches import Batch


@dataclass
class ShrinkPerturbConfig(StrategyConfig):
    shrink: float = 1e-4  # fraction of every weight removed per step
    noise_std: float = 1e-4  # std of the Gaussian noise added per step


class ShrinkPerturb(Strategy):
    name = "shrink_perturb"
    description = "shrink and perturb every step (plasticity baseline)"
    Config = ShrinkPerturbConfig
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py

    @classmethod
    def check_config(cls, config: ShrinkPerturbConfig) -> None:  # type: ignore[override]
        require(0.0 <= config.shrink < 1.0, "strategy.shrink", f"must be in [0, 1), got {config.shrink}")
        require(config.noise_std >= 0, "strategy.noise_std", f"must be >= 0, got {config.noise_std}")

    def __init__(self, config: ShrinkPerturbConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.check_config(config)
        self.rng = torch.Generator().manual_seed(ctx.seed * 7919 + 3)

    def after_step(self, batch: Batch) -> dict[str, float]:
        with self.ctx.gathered() as params:
            for name in sorted(params):
                p = params[name]
                noise = torch.randn(p.shape, generator=self.rng, dtype=torch.float32)
                p.mul_(1.0 - self.config.shrink).add_(noise.to(p), alpha=self.config.noise_std)
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.set_state(state["rng"])
