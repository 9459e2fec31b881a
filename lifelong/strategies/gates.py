"""Context gates (GateON): every hidden unit's pre-activation is multiplied by a gate that
depends on the context, g_l = ReTanh(U_l c) with c one-hot, so each context switches on its
own subset of units (ReTanh is exactly 0 for a non-positive input).

``GatedNet`` wraps the platform's flat ``nn.Sequential`` without changing it: the body's
layers, names and hidden units stay where the unit strategies, the probes and the update
masks find them (``net.<i>.weight``), and the gates sit beside them (``gates.<l>.weight``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.platform.model import Contextual
from lifelong.strategies.units import HiddenLayer


CLOSED_BELOW = 1e-6  # gate inputs under this give gate 0 (a gate < 1e-12: closed anyway)


def retanh(x: torch.Tensor) -> torch.Tensor:
    """ReTanh(x) = tanh(max(x, 0))^2: 0 for x <= 0, saturating at 1.

    Inputs under ``CLOSED_BELOW`` give exactly 0: gates of ~x^2 for tiny x would otherwise
    turn the products after them into subnormal floats, which CPUs compute ~100x slower
    (training steps took 5x longer on 100 permuted-MNIST tasks)."""
    return torch.tanh(torch.where(x > CLOSED_BELOW, x, torch.zeros_like(x))).square()


class ContextGate(nn.Module):
    """U_l as a ``(contexts, units)`` table with no bias: row c of ReTanh(U) is context c's
    gate (the one-hot product U c, read as a lookup). Its own module, so ZeRO-3 gathers it
    just before it is used."""

    def __init__(self, contexts: int, units: int, init_bound: float, generator: torch.Generator) -> None:
        super().__init__()
        weight = torch.empty(contexts, units).uniform_(-init_bound, init_bound, generator=generator)
        self.weight = nn.Parameter(weight)

    def forward(self, pre: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        gate = retanh(F.embedding(context, self.weight))  # [rows, units]
        return pre * gate.view(*gate.shape, *([1] * (pre.dim() - 2)))  # conv: per channel


class GatedNet(Contextual):
    """The body with a gate after each hidden layer's Linear/Conv2d, and optionally each
    hidden layer's output scaled to unit L2 norm per row (the authors' code does; it makes
    the layer's output independent of the gates' overall scale). ``taps[l]`` sees hidden
    layer l's output h (an identity module: forward hooks on it watch h and dL/dh)."""

    def __init__(self, net: nn.Sequential, layers: list[HiddenLayer], contexts: int, init_bound: float,
                 normalize: bool, seed: int) -> None:
        super().__init__()
        self.net = net
        generator = torch.Generator().manual_seed(seed * 1_000_033 + 17)
        self.gates = nn.ModuleList(ContextGate(contexts, layer.n_units, init_bound, generator)
                                   for layer in layers)
        self.taps = nn.ModuleList(nn.Identity() for _ in layers)
        self.normalize = normalize
        strip = len(self.body_prefix)
        self._gate_after = {layer.in_layer[strip:]: i for i, layer in enumerate(layers)}
        self._tap_after = {layer.activation[strip:]: i for i, layer in enumerate(layers)}

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for name, module in self.net.named_children():
            x = module(x)
            gate: Optional[int] = self._gate_after.get(name)
            if gate is not None:
                x = self.gates[gate](x, context)
            tap: Optional[int] = self._tap_after.get(name)
            if tap is not None:
                if self.normalize:
                    x = x / x.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (x.dim() - 1)))
                x = self.taps[tap](x)
        return x
