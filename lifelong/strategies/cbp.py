"""Continual backprop (Dohare et al. 2024, "Loss of plasticity in deep continual learning").

Plain backprop injects randomness once, at initialisation; over a long stream its units
go dormant or redundant and the network stops learning new tasks. Continual backprop
keeps injecting it: after every step it replaces a small fraction of the least useful
mature hidden units by freshly initialised ones ("generate and test").

Per hidden unit i of a layer, over the global batch (all workers):
- contribution utility  u_i <- decay * u_i + (1 - decay) * mean|h_i| * sum_k |w_out[k, i]|
  ("adaptable" variant: mean|h_i - m_i| * sum_k |w_out[k, i]| / mean_j |w_in[i, j]|);
- mean activation m_i <- decay * m_i + (1 - decay) * mean h_i;
- both bias-corrected by 1 - decay**age_i (they start at 0), like Adam's moments.
Units older than ``maturity_threshold`` steps are eligible. Each step adds
``replacement_rate`` x (number eligible) to a per-layer count; its whole part is the number
of eligible units with the lowest corrected utility that are replaced (see
``units.reinit_units``: fresh incoming weights, zero outgoing weights, the next layer's bias
absorbing the old unit's mean contribution), and their optimizer state (momentum, Adam
moments) is zeroed. Adam's step count is per tensor in torch, so it is not reset per unit.

Under data parallelism every rank sees the same all-reduced statistics and the same full
weights, sorts stably and draws fresh weights from one generator seeded alike everywhere,
so every rank replaces the same units with the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lifelong.platform.config import StrategyConfig
from lifelong.platform.errors import require
from lifelong.strategies.activity import ActivityMonitor, LayerActivity
from lifelong.strategies.base import Strategy, Support
from lifelong.strategies.units import (HiddenLayer, hidden_layers, incoming_magnitude,
                                       outgoing_magnitude, replace_units)
from lifelong.streams.batches import Batch


@dataclass
class CBPConfig(StrategyConfig):
    replacement_rate: float = 1e-4  # fraction of eligible units replaced per step
    maturity_threshold: int = 100  # steps a unit lives before it may be replaced
    decay: float = 0.99  # of the running utility and mean activation
    utility: str = "contribution"  # contribution | adaptable


class ContinualBackprop(Strategy):
    name = "cbp"
    description = "continual backprop: replace low-utility mature units with fresh ones"
    Config = CBPConfig
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py

    @classmethod
    def check_config(cls, config: CBPConfig) -> None:  # type: ignore[override]
        require(0.0 <= config.replacement_rate <= 1.0, "strategy.replacement_rate",
                f"must be in [0, 1], got {config.replacement_rate}")
        require(config.maturity_threshold >= 0, "strategy.maturity_threshold",
                f"must be >= 0, got {config.maturity_threshold}")
        require(0.0 <= config.decay < 1.0, "strategy.decay", f"must be in [0, 1), got {config.decay}")
        require(config.utility in ("contribution", "adaptable"), "strategy.utility",
                f"{config.utility!r} is not one of contribution, adaptable")

    def __init__(self, config: CBPConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.check_config(config)
        self.layers: list[HiddenLayer] = []
        self.rng = torch.Generator().manual_seed(ctx.seed * 7919 + 1)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        self.layers = hidden_layers(model, "strategy 'cbp'")
        centre = self.mean_activation if self.config.utility == "adaptable" else None
        self.monitor = ActivityMonitor(model, self.layers, centre)
        zeros = {layer.name: torch.zeros(layer.n_units, dtype=torch.float64) for layer in self.layers}
        self.utility = {k: v.clone() for k, v in zeros.items()}
        self.mean = {k: v.clone() for k, v in zeros.items()}
        self.age = {k: v.long() for k, v in zeros.items()}
        self.pending = {layer.name: 0.0 for layer in self.layers}  # fractional replacements owed
        self.replaced = {layer.name: 0 for layer in self.layers}
        return model

    def mean_activation(self, layer: str) -> torch.Tensor:
        """Bias-corrected running mean activation per unit (0 for a newborn unit)."""
        correction = 1.0 - self.config.decay ** self.age[layer].double()
        return torch.where(self.age[layer] > 0, self.mean[layer] / correction.clamp(min=1e-12), 0.0)

    def after_step(self, batch: Batch) -> dict[str, float]:
        activity = self.monitor.collect(self.ctx.reduce)
        names = [n for layer in self.layers for n in (layer.in_weight(), layer.out_weight())]
        weights = self.ctx.full_params(names)
        chosen = {}
        for layer in self.layers:
            units = self._update(layer, activity[layer.name], weights)
            if units is not None:
                chosen[layer.name] = units
        if chosen:
            self._replace(chosen)
        return {f"cbp/replaced/{name}": float(n) for name, n in self.replaced.items()}

    def _update(self, layer: HiddenLayer, act: LayerActivity,
                weights: dict[str, torch.Tensor]) -> "torch.Tensor | None":
        """Advance the layer's running statistics; the units to replace now, if any."""
        name, decay = layer.name, self.config.decay
        out_magnitude = outgoing_magnitude(layer, weights[layer.out_weight()]).double().cpu()
        if self.config.utility == "adaptable":
            in_magnitude = incoming_magnitude(layer, weights[layer.in_weight()]).double().cpu()
            contribution = act.mean_abs_deviation * out_magnitude / in_magnitude.clamp(min=1e-12)
        else:
            contribution = act.mean_abs * out_magnitude
        self.age[name] += 1
        self.utility[name].mul_(decay).add_(contribution, alpha=1 - decay)
        self.mean[name].mul_(decay).add_(act.mean, alpha=1 - decay)
        eligible = (self.age[name] > self.config.maturity_threshold).nonzero().flatten()
        self.pending[name] += self.config.replacement_rate * eligible.numel()
        count = int(self.pending[name])
        if count == 0:
            return None
        self.pending[name] -= count
        corrected = self.utility[name][eligible] / (1.0 - decay ** self.age[name][eligible].double())
        lowest = eligible[torch.sort(corrected, stable=True).indices[:count]]
        units = torch.zeros(layer.n_units, dtype=torch.bool)
        units[lowest] = True
        return units

    def _replace(self, chosen: dict[str, torch.Tensor]) -> None:
        layers = [layer for layer in self.layers if layer.name in chosen]  # in depth order
        replace_units(self.ctx, [(layer, chosen[layer.name]) for layer in layers], self.rng,
                      lambda layer: self.mean_activation(layer.name))
        for layer in layers:
            units = chosen[layer.name]
            for stat in (self.utility, self.mean, self.age):
                stat[layer.name][units] = 0
            self.replaced[layer.name] += int(units.sum())

    def state_dict(self) -> dict[str, Any]:
        return {"utility": self.utility, "mean": self.mean, "age": self.age, "pending": self.pending,
                "replaced": self.replaced, "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.utility, self.mean, self.age = state["utility"], state["mean"], state["age"]
        self.pending, self.replaced = dict(state["pending"]), dict(state["replaced"])
        self.rng.set_state(state["rng"])
