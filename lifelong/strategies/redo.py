"""ReDo: recycle dormant units (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep
Reinforcement Learning"), a plasticity baseline to continual backprop.

Every ``every`` steps, on that step's global training batch, unit i of a hidden layer
scores s_i = mean|h_i| / (mean over the layer's units of mean|h_k|). Units with
s_i <= ``tau`` are tau-dormant and are recycled: fresh incoming weights from the layer's
init distribution, zero outgoing weights, optimizer state zeroed (``units.reinit_units``,
without continual backprop's bias correction; a dormant unit contributed ~nothing).
Like continual backprop, every rank sees the same all-reduced scores and draws from one
generator seeded alike, so every rank recycles the same units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lifelong.platform.config import StrategyConfig
from lifelong.platform.errors import require
from lifelong.strategies.activity import ActivityMonitor
from lifelong.strategies.base import Strategy, Support
from lifelong.strategies.units import HiddenLayer, hidden_layers, replace_units
from lifelong.streams.batches import Batch


@dataclass
class ReDoConfig(StrategyConfig):
    tau: float = 0.1  # dormancy threshold on the normalised score
    every: int = 1000  # steps between recycling passes


def dormant_units(mean_abs: torch.Tensor, tau: float) -> torch.Tensor:
    """Sokar's tau-dormant units (bool) from per-unit mean |activation|; all of them if the
    whole layer is silent."""
    layer_mean = mean_abs.mean()
    if layer_mean <= 0:
        return torch.ones_like(mean_abs, dtype=torch.bool)
    return mean_abs / layer_mean <= tau


class ReDo(Strategy):
    name = "redo"
    description = "ReDo: periodically re-initialise tau-dormant units"
    Config = ReDoConfig
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py

    @classmethod
    def check_config(cls, config: ReDoConfig) -> None:  # type: ignore[override]
        require(config.tau >= 0.0, "strategy.tau", f"must be >= 0, got {config.tau}")
        require(config.every >= 1, "strategy.every", f"must be >= 1, got {config.every}")

    def __init__(self, config: ReDoConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.check_config(config)
        self.rng = torch.Generator().manual_seed(ctx.seed * 7919 + 2)
        self.steps = 0
        self.layers: list[HiddenLayer] = []
        self.recycled: dict[str, int] = {}

    def wrap_model(self, model: nn.Module) -> nn.Module:
        self.layers = hidden_layers(model, "strategy 'redo'")
        self.monitor = ActivityMonitor(model, self.layers)
        self.monitor.active = self._due(self.steps + 1)
        self.recycled = {layer.name: 0 for layer in self.layers}
        return model

    def after_step(self, batch: Batch) -> dict[str, float]:
        self.steps += 1
        self.monitor.active = self._due(self.steps + 1)  # watch only the forward that decides
        if not self._due(self.steps):
            return {}
        activity = self.monitor.collect(self.ctx.reduce)
        chosen = [(layer, dormant_units(activity[layer.name].mean_abs, self.config.tau))
                  for layer in self.layers]
        chosen = [(layer, units) for layer, units in chosen if bool(units.any())]
        if chosen:
            replace_units(self.ctx, chosen, self.rng)
            for layer, units in chosen:
                self.recycled[layer.name] += int(units.sum())
        return {f"redo/recycled/{name}": float(n) for name, n in self.recycled.items()}

    def _due(self, step: int) -> bool:
        return step % self.config.every == 0

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "recycled": self.recycled, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.recycled = state["steps"], dict(state["recycled"])
        self.monitor.active = self._due(self.steps + 1)
        self.rng.set_state(state["rng"])
