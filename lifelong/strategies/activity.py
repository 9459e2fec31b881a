"""What each hidden layer's units did on the current training batch, summed over every
worker's slice: the input to unit-level strategies (continual backprop, ReDo).

Forward hooks on the activation modules add up, per unit, |h|, h and |h - centre| over
the rows of each training forward (evaluation runs in eval mode and is not counted).
``collect`` all-reduces the sums in one float64 collective, so every rank sees the
statistics of the whole global batch and makes the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from lifelong.strategies.units import HiddenLayer, per_input_activity

Centre = Callable[[str], Optional[torch.Tensor]]  # layer name -> per-unit centre, or None


@dataclass
class LayerActivity:
    """Per unit, over the global batch: mean |h|, mean h, mean |h - centre| (0 without a
    centre; conv: per channel, averaged over positions first)."""

    mean_abs: torch.Tensor
    mean: torch.Tensor
    mean_abs_deviation: torch.Tensor
    rows: int


class ActivityMonitor:
    def __init__(self, model: nn.Module, layers: list[HiddenLayer], centre: Optional[Centre] = None) -> None:
        self.layers = layers
        # On the activations' device (created by the first forward), so a GPU step never waits.
        self._sums: dict[str, Optional[torch.Tensor]] = {layer.name: None for layer in layers}
        self._rows = 0
        self.active = True  # a strategy that decides only now and then switches it off between
        modules = dict(model.named_modules())
        for layer in layers:
            modules[layer.activation].register_forward_hook(self._hook(layer.name, centre))

    def _hook(self, name: str, centre: Optional[Centre]) -> Callable[..., None]:
        # A closure rather than a bound method: deep copies of the model (its meta skeleton)
        # then share the function instead of copying this monitor into themselves.
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not module.training or not self.active:
                return
            h = per_input_activity(output.detach()).double()
            sums = self._sums[name]
            if sums is None:
                sums = self._sums[name] = h.new_zeros(3, h.shape[1])
            sums[0] += h.abs().sum(0)
            sums[1] += h.sum(0)
            if centre is not None:  # only the adaptable utility needs it
                sums[2] += (h - centre(name).to(h)).abs().sum(0)
            if name == self.layers[0].name:
                self._rows += h.shape[0]

        return record

    def collect(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, LayerActivity]:
        """Sums since the last call, over every worker (``reduce`` is ``ctx.reduce``), as means."""
        parts = [self._sums[layer.name] for layer in self.layers]
        device = next((p.device for p in parts if p is not None), torch.device("cpu"))
        flat = torch.cat([(torch.zeros(3, layer.n_units, dtype=torch.float64, device=device)
                           if part is None else part).flatten() for layer, part in zip(self.layers, parts)]
                         + [torch.tensor([float(self._rows)], dtype=torch.float64, device=device)])
        flat = reduce(flat).cpu()  # the one host sync of a step
        rows = max(float(flat[-1]), 1.0)
        out, at = {}, 0
        for layer in self.layers:
            block = flat[at:at + 3 * layer.n_units].view(3, layer.n_units) / rows
            at += 3 * layer.n_units
            out[layer.name] = LayerActivity(block[0], block[1], block[2], int(rows))
        self.clear()
        return out

    def clear(self) -> None:
        for sums in self._sums.values():
            if sums is not None:
                sums.zero_()
        self._rows = 0
