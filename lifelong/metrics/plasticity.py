"""Loss-of-plasticity probes of one hidden layer, from its activations on a fixed probe batch.

``acts`` is [N, U] (Linear: N inputs, U units) or [N, C, H, W] (Conv2d: the C channels are
the units and every (input, position) pair counts as a sample); ``unit_matrix`` flattens
both to one [samples, units] matrix so every measure accepts either shape. A unit is
*active* on a sample when ``h != 0`` (not ``h > 0``: a tanh unit at -0.7 is firing).
Variants, as papers disagree:
- dormant: Sokar et al. (2023), "The Dormant Neuron Phenomenon in Deep RL" (ReDo).
- rarely active and stable rank: Dohare et al. (2024), "Loss of plasticity in deep
  continual learning" (Nature).
- effective rank: Roy & Vetterli (2007), "The effective rank: a measure of effective
  dimensionality".
Ranks are from singular values in float64; values at or below the numerical-rank cutoff
(``max(s) * max(rows, cols) * eps`` with the eps of ``acts``' own dtype, as numpy's
``matrix_rank``) count as 0, so float32 rounding noise does not pass for extra dimensions.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

# Keys of ``layer_measures``, in the order plots show them.
MEASURES = ("dead", "dormant", "rarely_active", "effective_rank", "stable_rank",
            "mean_abs_weight", "grad_norm")


def unit_matrix(acts: torch.Tensor) -> torch.Tensor:
    """[N, U] as is; [N, C, H, W] -> [N*H*W, C], so a channel is judged on every position it sees."""
    acts = acts.detach()
    if acts.dim() == 2:
        return acts
    if acts.dim() == 4:
        return acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1])
    raise ValueError(f"expected [N, U] or [N, C, H, W] activations, got shape {tuple(acts.shape)}")


def dead_fraction(acts: torch.Tensor) -> float:
    """Fraction of units with h == 0 on every probe sample (for ReLU: the unit never fires)."""
    h = unit_matrix(acts)
    return float((h.abs() > 0).any(dim=0).logical_not().double().mean())


def dormant_fraction(acts: torch.Tensor, tau: float) -> float:
    """Fraction of tau-dormant units (Sokar et al. 2023): s_i <= tau, where
    s_i = mean_x |h_i(x)| / ((1/U) sum_k mean_x |h_k(x)|).

    The score is relative to the layer's average unit, so it is scale-free; a layer with
    no activity at all has every unit dormant (rather than 0/0).
    """
    activity = unit_matrix(acts).double().abs().mean(dim=0)
    average = activity.mean()
    if average == 0:
        return 1.0
    return float((activity / average <= tau).double().mean())


def rarely_active_fraction(acts: torch.Tensor, threshold: float = 0.01) -> float:
    """Fraction of units active (|h| > 0) on fewer than ``threshold`` of the probe samples
    (Dohare et al. 2024 use 1%); dead units count too, being active on 0%."""
    h = unit_matrix(acts)
    active_share = (h.abs() > 0).double().mean(dim=0)
    return float((active_share < threshold).double().mean())


def _singular_values(acts: torch.Tensor) -> torch.Tensor:
    """Singular values of the [samples, units] matrix in float64, rounding noise zeroed."""
    h = unit_matrix(acts)
    eps = torch.finfo(h.dtype if h.is_floating_point() else torch.float64).eps
    s = torch.linalg.svdvals(h.double())
    if s.numel() == 0:
        return s
    cutoff = s.max() * max(h.shape) * eps
    return torch.where(s > cutoff, s, torch.zeros_like(s))


def effective_rank(acts: torch.Tensor) -> float:
    """exp(-sum_k p_k log p_k) with p_k = sigma_k / sum_j sigma_j (Roy & Vetterli 2007).

    Equals r for r equal non-zero singular values and falls smoothly as the spectrum
    concentrates, unlike the integer rank. Zero singular values add 0 to the entropy;
    an all-zero matrix has effective rank 0.
    """
    s = _singular_values(acts)
    total = s.sum()
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(acts: torch.Tensor, mass: float = 0.99) -> int:
    """Smallest k whose k largest singular values hold ``mass`` of their sum (the "stable
    rank" of Dohare et al. 2024; not the ||A||_F^2 / ||A||_2^2 of numerical analysis).

    The comparison allows a relative 1e-9 of slack, so that e.g. 99 of 100 equal singular
    values reach 0.99 despite float rounding. 0 for an all-zero matrix.
    """
    s = _singular_values(acts).sort(descending=True).values
    total = s.sum()
    if total == 0:
        return 0
    reached = s.cumsum(dim=0) >= mass * total - 1e-9 * total
    return int(reached.nonzero()[0, 0]) + 1


def layer_measures(acts: torch.Tensor, weight: torch.Tensor, grad: Optional[torch.Tensor],
                   tau: float) -> dict[str, float]:
    """Every probe of one layer, keyed as ``MEASURES``.

    "dead", "dormant" and "rarely_active" are fractions of the layer's units; the ranks are
    of the [samples, units] activation matrix; "mean_abs_weight" is mean |w| over ``weight``;
    "grad_norm" is the L2 norm of ``grad`` over all its entries, nan when there is none
    (no backward pass yet).
    """
    return {
        "dead": dead_fraction(acts),
        "dormant": dormant_fraction(acts, tau),
        "rarely_active": rarely_active_fraction(acts),
        "effective_rank": effective_rank(acts),
        "stable_rank": stable_rank(acts),
        "mean_abs_weight": float(weight.detach().double().abs().mean()),
        "grad_norm": math.nan if grad is None else float(grad.detach().double().norm()),
    }
