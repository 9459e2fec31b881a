"""Frozen rows skip their weight gradient: the backward of a Linear layer whose rows
(units) are frozen by an update mask computes ``dL/dW`` for the active rows only.

A frozen row never moves, and the optimizer never reads its gradient, so computing it
is wasted work: in an MLP the weight gradients are about 40% of the matmul work of a
training step. The input gradient is still whole (a frozen unit's activation still
depends on earlier layers, so gradients flow through it) and so is the forward. A frozen
row's gradient reads as 0 (e.g. in ``transform_grads``).

Applies to ``nn.Linear`` weights with a row mask (shape ``(out_features,)``) that has
zeros; anything else keeps its ordinary backward.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F


class _ActiveRowsLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                active: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight, active)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        x, weight, active = ctx.saved_tensors
        grad_x = grad_out.matmul(weight) if ctx.needs_input_grad[0] else None
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(weight)
            if active.numel():
                grad_w.index_copy_(0, active, rows.index_select(1, active).t().matmul(x.reshape(-1, x.shape[-1])))
        if ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b, None


def _forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled() or not module.weight.requires_grad:
        return F.linear(x, module.weight, module.bias)
    return _ActiveRowsLinear.apply(x, module.weight, module.bias, module.lifelong_active_rows)


def sync(model: nn.Module, name: str, mask: Optional[torch.Tensor]) -> None:
    """Called when ``name``'s update mask changes: install or remove the skipping."""
    path, _, leaf = name.rpartition(".")
    module = model.get_submodule(path) if path else model
    if leaf != "weight" or type(module) is not nn.Linear:
        return
    rows = mask is not None and mask.dim() == 1 and bool((mask == 0).any())
    if rows:
        active = (mask != 0).nonzero().view(-1).to(module.weight.device)
        module.lifelong_active_rows = active
        module.forward = _forward.__get__(module)  # this instance only
    elif "forward" in vars(module):
        del module.forward
        del module.lifelong_active_rows
