"""Sum over rows of squared per-row gradients, without materialising per-row gradients.

The empirical Fisher diagonal (EWC) needs  sum_i g_i^2  where g_i is row i's own loss
gradient. Materialising every g_i (torch.func's vmap(grad)) costs a full parameter vector
per row. For the layers our models are made of, the sum has a closed form:

- ``nn.Linear``  y = x W^T + b: row i's weight gradient is the outer product delta_i x_i^T,
  with delta_i = dL_i/dy_i, so  sum_i (delta_i x_i^T)^2 = (delta^2)^T (x^2)  -- one matmul
  per layer -- and the bias term is  sum_i delta_i^2.
- ``nn.Conv2d``: through unfold, row i's weight gradient is  delta_i (C_out x P) @ U_i^T
  (P x C_in*k*k), a small matrix per row (P output positions); the bias term is the
  squared sum of delta_i over positions.

It is exact (not an approximation) because of two facts: with the per-row losses *summed*,
the gradient of the sum with respect to a layer's output, restricted to row i, is row i's
own delta_i (rows do not interact: no batch statistics); and a weight used by exactly one
module call sees row i only through that call. So one forward recording every Linear/Conv2d
input and output, and one ``torch.autograd.grad`` with respect to those outputs only (the
engine then skips every weight-gradient matmul), give all deltas.

Modules are found by tensor identity: a forward hook (global, active only during this call,
ignoring any module whose weight is not one of ``params``) sees the very tensors passed in.
Any parameter this does not cover -- another module type (a strategy's gate, say), a
subclass of Linear/Conv2d (its forward may differ), a module called more than once or
sharing a weight with another (tied weights), a grouped or non-zero-padded convolution --
gets the exact torch.func path, for those parameters only, so the result is exact for any
model. The one assumption: a covered module's weight and bias are used only through that
module's forward (true of every model ``build_model`` makes and of modules a strategy
inserts around them), and rows do not interact (no batch statistics), which the per-row
definition itself needs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap
from torch.nn.modules.module import register_module_forward_hook

RowLosses = Callable[..., torch.Tensor]  # (params, *batch) -> per-row losses [B]


def squared_row_grad_sums(row_losses: RowLosses, params: dict[str, torch.Tensor],
                          *batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """sum_i (d loss_i / d p)^2 for every p in ``params``; ``row_losses(params, *batch)``
    must run the model with exactly these tensors (a functional call) and return one loss
    per row of the batch tensors."""
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    with torch.enable_grad():  # also when called under no_grad
        # Parameters require grad so every layer output is in the graph; autograd.grad then
        # runs only the input-gradient matmuls on the way to those outputs, no weight gradient.
        live = {k: v.detach().requires_grad_() for k, v in params.items()}
        loss, calls = _record_layer_calls(row_losses, live, batch)
        covered = _coverable(calls)
        deltas = (torch.autograd.grad(loss, [c.output for c in covered], allow_unused=True)
                  if covered else ())
    with torch.no_grad():
        for call, delta in zip(covered, deltas):
            if delta is None:  # the output never reached the loss: zero gradient
                continue
            for attr, value in _layer_sums(call.module, call.input, delta).items():
                total[str(call.names[attr])] += value
    done = {name for call in covered for name in call.names.values()}
    rest = [k for k in params if k not in done]
    if rest:
        total.update(_per_row_fallback(row_losses, params, rest, batch))
    return total


@dataclass
class _Call:
    """One Linear/Conv2d call whose weight is one of the params, as the forward saw it."""

    module: nn.Module
    names: dict[str, Optional[str]]  # "weight"/"bias" -> parameter name (None: not a param)
    input: torch.Tensor
    output: torch.Tensor


def _record_layer_calls(row_losses: RowLosses, live: dict[str, torch.Tensor],
                        batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list[_Call]]:
    by_id = {id(v): k for k, v in live.items()}
    calls: list[_Call] = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        # Names now: once the functional call returns, the module holds its own tensors again.
        if isinstance(module, (nn.Linear, nn.Conv2d)) and args and id(module.weight) in by_id:
            names = {"weight": by_id[id(module.weight)]}
            if module.bias is not None:
                names["bias"] = by_id.get(id(module.bias))
            calls.append(_Call(module, names, args[0], out))

    handle = register_module_forward_hook(hook)
    try:
        loss = row_losses(live, *batch).sum()
    finally:
        handle.remove()
    return loss, calls


def _coverable(calls: list[_Call]) -> list[_Call]:
    """The calls whose parameters the closed forms cover exactly."""
    uses = Counter(name for call in calls for name in call.names.values())
    covered = []
    for call in calls:
        module, x = call.module, call.input
        if not all(name is not None and uses[name] == 1 for name in call.names.values()):
            continue
        if type(module) is nn.Linear and x.dim() >= 2:
            covered.append(call)
        elif (type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
              and not isinstance(module.padding, str) and x.dim() == 4):
            covered.append(call)
    return covered


def _layer_sums(module: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """sum over rows of squared per-row gradients of one layer call, by attribute name."""
    if isinstance(module, nn.Linear):
        if x.dim() == 2:
            sums = {"weight": delta.square().T @ x.square()}
            bias = delta.square().sum(0)
        else:  # extra dims (positions) sum inside a row before squaring
            x, delta = x.flatten(1, -2), delta.flatten(1, -2)
            sums = {"weight": torch.bmm(delta.transpose(1, 2), x).square().sum(0)}
            bias = delta.sum(1).square().sum(0)
    else:
        assert isinstance(module, nn.Conv2d)
        unfolded = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        delta = delta.flatten(2)  # [B, C_out, P]
        per_row = torch.bmm(delta, unfolded.transpose(1, 2))  # [B, C_out, C_in*k*k]
        sums = {"weight": per_row.square().sum(0).view(delta.shape[1], *x.shape[1:2], *module.kernel_size)}
        bias = delta.sum(2).square().sum(0)
    if module.bias is not None:
        sums["bias"] = bias
    return sums


def _per_row_fallback(row_losses: RowLosses, params: dict[str, torch.Tensor], names: list[str],
                      batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """The exact torch.func path (a gradient per row), for ``names`` only."""
    fixed = {k: v.detach() for k, v in params.items() if k not in names}

    def row_loss(free: dict[str, torch.Tensor], *row: torch.Tensor) -> torch.Tensor:
        return row_losses({**fixed, **free}, *(r[None] for r in row)).sum()

    free = {k: params[k].detach() for k in names}
    per_row = vmap(grad(row_loss), in_dims=(None,) + (0,) * len(batch))(free, *batch)
    return {k: g.square().sum(0) for k, g in per_row.items()}

