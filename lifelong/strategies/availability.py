"""GateON's relevance and availability: which units (or weights) matter to the contexts
learnt so far, and how much each may still change.

Relevance, normalised by its layer's mean (r^ = r / mean_layer r):
- n-GateON, per hidden unit: r = mean over the batch of (dl/dh * h)^2, with l a row's own
  loss and h the unit's output (conv: a channel's dl/dh * h summed over positions first);
- p-GateON, per weight and bias: r = (dL/dw * w)^2 with L the batch loss.

Availability follows A <- clip(A - eta * A * (r^ - eps), 0, 1): relevant units lose it,
and with eps > 0 units less relevant than eps regain it (re-activation).

Under data parallelism ``UnitRelevance`` sums its rows' terms on each worker and
``collect`` all-reduces them (float64), so every rank sees the global batch's relevance and
makes the same availability decisions; the p-GateON relevance is computed from the full,
already averaged gradients (``ctx.editable_grads``), the same on every rank.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

UNAVAILABLE_BELOW = 0.05  # availability under which a unit counts as unavailable (the paper's)


def normalised(relevance: torch.Tensor) -> torch.Tensor:
    """r / mean(r); all zeros stay zeros (a layer no row used: nothing is relevant)."""
    mean = relevance.mean()
    return relevance / mean if mean > 0 else torch.zeros_like(relevance)


def update_availability(available: torch.Tensor, relevance_hat: torch.Tensor, eta: float,
                        eps: float) -> torch.Tensor:
    """A - eta * A * (r^ - eps), clipped to [0, 1] (in place; returned for convenience)."""
    available.sub_(eta * available * (relevance_hat.to(available) - eps)).clamp_(0.0, 1.0)
    return available


def unit_relevance_terms(h: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per unit, the sum over rows of (dl/dh * h)^2, from one layer's output ``h`` and the
    gradient of the rows' *mean* loss (so a row's own gradient is ``rows * grad``)."""
    contribution = (grad * h * h.shape[0]).flatten(2).sum(2) if h.dim() > 2 else grad * h * h.shape[0]
    return contribution.double().square().sum(0)


class UnitRelevance:
    """n-GateON relevance, accumulated by hooks on the gated model's taps over the training
    forwards/backwards since the last ``collect`` (evaluation runs in eval mode: not seen)."""

    def __init__(self, taps: nn.ModuleList, units: list[int]) -> None:
        self.units = units
        self._sums: list[Optional[torch.Tensor]] = [None] * len(units)
        self._rows = 0
        for i, tap in enumerate(taps):
            tap.register_forward_hook(self._hook(i))

    def _hook(self, layer: int) -> Callable[..., None]:
        def watch(module: nn.Module, inputs: tuple, h: torch.Tensor) -> None:
            if not (module.training and h.requires_grad):
                return
            if layer == 0:
                self._rows += h.shape[0]
            kept = h.detach()
            h.register_hook(lambda grad: self._add(layer, unit_relevance_terms(kept, grad.detach())))

        return watch

    def _add(self, layer: int, terms: torch.Tensor) -> None:
        sums = self._sums[layer]
        self._sums[layer] = terms if sums is None else sums + terms

    def collect(self, reduce: Callable[[torch.Tensor], torch.Tensor],
                extra: Optional[torch.Tensor] = None) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        """Per layer, the global batch's mean relevance per unit (all workers); ``extra``
        (float64, on the CPU) rides the same all-reduce and comes back reduced."""
        parts = [torch.zeros(n, dtype=torch.float64) if s is None else s.cpu()
                 for n, s in zip(self.units, self._sums)]
        tail = [torch.tensor([float(self._rows)], dtype=torch.float64)]
        if extra is not None:
            tail.append(extra.double().flatten())
        flat = reduce(torch.cat(parts + tail))
        self._sums, self._rows = [None] * len(self.units), 0
        at, out = 0, []
        rows_at = sum(self.units)
        rows = max(float(flat[rows_at]), 1.0)
        for n in self.units:
            out.append(flat[at:at + n] / rows)
            at += n
        return out, (flat[rows_at + 1:] if extra is not None else None)


def parameter_relevance(grads: dict[str, torch.Tensor], params: dict[str, torch.Tensor],
                        names: list[str]) -> dict[str, torch.Tensor]:
    """p-GateON: (dL/dw * w)^2 for one layer's tensors (weight and bias), normalised by
    their common mean."""
    raw = {n: (grads[n].double() * params[n].double()).square().cpu() for n in names}
    mean = torch.cat([r.flatten() for r in raw.values()]).mean()
    return {n: (r / mean if mean > 0 else torch.zeros_like(r)) for n, r in raw.items()}
