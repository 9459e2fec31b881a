"""Noisy top-k routing and its auxiliary losses, as pure functions of router logits.

Kept apart from the expert layer so each piece can be checked on hand-built logits:
- ``route``: Shazeer et al.'s noisy top-k gating (2017). Noise is added to the logits
  while training, the k largest win, and their gates are a softmax over those k logits.
  Experts a context may not use carry -inf logits and are never chosen.
- ``switch_balance``: the Switch Transformer's load-balance loss, E * sum_i f_i P_i, with
  f_i the share of routing slots sent to expert i and P_i its mean router probability.
- ``cv2_balance``: Shazeer's cv^2 of each expert's routing mass (its summed gates).
- ``z_loss``: ST-MoE's router z-loss, mean (logsumexp logits)^2, which keeps logits small.

Sharding: f_i and the routing mass are batch statistics, so a worker's loss must use the
whole global batch's values to give the step a single worker takes. ``switch_balance``
takes f (a count, not differentiated) already all-reduced; P enters linearly, so each
worker's mean over its own rows averages to the global one. ``cv2_balance`` is not linear
in the mass: it is evaluated at the global mass and differentiated through each worker's
own share (``cv2_surrogate``), which gives the global gradient after data-parallel
averaging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Routing:
    """Which experts each row uses and with what weight."""

    experts: torch.Tensor  # int64 [rows, k]
    gates: torch.Tensor  # [rows, k], softmax over the chosen logits (sums to 1 per row)
    probs: torch.Tensor  # [rows, E], softmax over every allowed expert (for the balance loss)
    logits: torch.Tensor  # [rows, E], clean (noise-free), -inf where not allowed


def route(logits: torch.Tensor, k: int, allowed: Optional[torch.Tensor] = None,
          noise: Optional[torch.Tensor] = None) -> Routing:
    """Top-k routing of ``logits`` [rows, E]; ``allowed`` [rows, E] bool masks experts out,
    ``noise`` [rows, E] is added before choosing (training only)."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    noisy = logits if noise is None else logits + noise
    top, experts = noisy.topk(k, dim=1)
    return Routing(experts=experts, gates=torch.softmax(top, dim=1),
                   probs=torch.softmax(logits, dim=1), logits=logits)


def slot_counts(routing: Routing, n_experts: int) -> torch.Tensor:
    """How many routing slots (rows x k) went to each expert: float64 [E], not differentiated."""
    return torch.bincount(routing.experts.flatten(), minlength=n_experts).double()


def switch_balance(probs: torch.Tensor, share: torch.Tensor, n_allowed: int) -> torch.Tensor:
    """E * sum_i f_i P_i: ``share`` f [E] (the global batch's slot shares, sum 1), P the mean
    of ``probs`` [rows, E] over this worker's rows; E the number of experts that may be
    chosen. 1 when routing is uniform, up to E when one expert takes everything."""
    if probs.shape[0] == 0:
        return probs.sum() * 0.0
    return n_allowed * (share.to(probs.dtype) * probs.mean(0)).sum()


def cv2(mass: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation of the routing mass over the allowed experts."""
    m = mass[allowed]
    if m.numel() < 2:
        return m.sum() * 0.0
    return m.var(unbiased=False) / (m.mean().square() + 1e-10)


def cv2_surrogate(mass_local: torch.Tensor, mass_global: torch.Tensor, allowed: torch.Tensor,
                  workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to differentiate, value to log) for cv^2 of the global routing mass, where this
    worker holds ``mass_local`` (differentiable) and ``mass_global`` is the all-reduced sum:
    d cv^2 / d mass at the global mass, times this worker's mass, times ``workers`` (the
    data-parallel average divides by it)."""
    point = mass_global.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = cv2(point, allowed)
        (slope,) = torch.autograd.grad(value, point)
    loss = workers * (slope.to(mass_local.dtype) * mass_local).sum()
    return loss - loss.detach() + value.detach().to(loss.dtype), value.detach()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean squared log-partition of the router logits over this worker's rows."""
    if logits.shape[0] == 0:
        return logits.nan_to_num(0.0, 0.0, 0.0).sum() * 0.0
    return torch.logsumexp(logits, dim=1).square().mean()
