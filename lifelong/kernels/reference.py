"""The specification of lifelong's fused updates, in plain torch: always available, and the
implementation every fused kernel (``cpu.py``, ``triton_update.py``) is tested against.

Every update works on one flat, contiguous fp32 tensor at a time: a whole parameter on a
plain worker and at ZeRO-0, this rank's flat partition at ZeRO 1-3. All tensors of one
call have the same number of elements ``n`` (state tensors are updated in place).

Three optional inputs shape an update; each is ``None`` for "not used":

- ``scale``: one value per element, uint8 (0 or 1) or float32 in [0, 1]. ``0`` freezes
  the element: the parameter *and* its optimizer state (momentum buffer, Adam moments) are
  bit-identical after the step, whatever the weight decay. A value ``s`` in (0, 1] keeps
  the state update of the dense step and moves the parameter by ``s`` times the dense
  step's change.
- ``spans``: int64 ``(k, 2)``, sorted, disjoint ``[start, stop)`` element ranges: only
  these elements are touched (the rest are frozen, as if their scale were 0), so a
  row-sparse update costs in proportion to its active rows. ``scale``, if also given,
  still applies inside the spans.
- ``pull``: ``(lam, curvature, offset)``: the gradient the step uses is
  ``grad + lam * (curvature * param - offset)``, the gradient of the diagonal quadratic
  penalty ``lam/2 * curvature * param^2 - lam * offset * param``. EWC's sum over tasks of
  ``lam/2 * F_t (param - anchor_t)^2`` is this with ``curvature = sum F_t`` and
  ``offset = sum F_t * anchor_t``, so the penalty costs no separate pass.

The dense step (no scale, spans or pull) is torch's: ``torch.optim.SGD`` (momentum, no
dampening or Nesterov; a zero momentum buffer before the first step), ``torch.optim.Adam``
(L2 weight decay added to the gradient) and ``torch.optim.AdamW`` (``decoupled``: the
parameter decays by ``lr * weight_decay`` beside the Adam step). ``step`` is the Adam step
number after increment (1 on the first step); it is one per tensor, so an element frozen
for a while resumes with the bias correction of the tensor's step count.
"""

from __future__ import annotations

from typing import Optional

import torch

Pull = tuple[float, torch.Tensor, torch.Tensor]


def sgd_update(param: torch.Tensor, grad: torch.Tensor, momentum_buffer: Optional[torch.Tensor], *,
               lr: float, momentum: float, weight_decay: float,
               scale: Optional[torch.Tensor] = None, spans: Optional[torch.Tensor] = None,
               pull: Optional[Pull] = None) -> None:
    """One SGD(-momentum) step in place; ``momentum_buffer`` is None when ``momentum == 0``."""
    for sl in _pieces(param, spans):
        p, g = param[sl], grad[sl]
        d = _effective_grad(p, g, pull, sl)
        if weight_decay:
            d = d + weight_decay * p
        if momentum:
            buf = momentum_buffer[sl]
            new_buf = momentum * buf + d
            update = new_buf
        else:
            new_buf, update = None, d
        keep = _frozen(scale, sl)
        if new_buf is not None:
            buf.copy_(_select(keep, buf, new_buf))
        p.copy_(_select(keep, p, p - lr * _scaled(update, scale, sl)))


def adam_update(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                exp_avg_sq: torch.Tensor, *, step: int, lr: float, beta1: float, beta2: float,
                eps: float, weight_decay: float, decoupled: bool,
                scale: Optional[torch.Tensor] = None, spans: Optional[torch.Tensor] = None,
                pull: Optional[Pull] = None) -> None:
    """One Adam (``decoupled=False``) or AdamW (``decoupled=True``) step in place."""
    bias1 = 1 - beta1 ** step
    bias2_sqrt = (1 - beta2 ** step) ** 0.5
    step_size = lr / bias1
    for sl in _pieces(param, spans):
        p, g, m, v = param[sl], grad[sl], exp_avg[sl], exp_avg_sq[sl]
        d = _effective_grad(p, g, pull, sl)
        if weight_decay and not decoupled:
            d = d + weight_decay * p
        new_m = m + (1 - beta1) * (d - m)
        new_v = beta2 * v + (1 - beta2) * d * d
        update = step_size * new_m / (new_v.sqrt() / bias2_sqrt + eps)
        if weight_decay and decoupled:
            update = update + (lr * weight_decay) * p
        keep = _frozen(scale, sl)
        m.copy_(_select(keep, m, new_m))
        v.copy_(_select(keep, v, new_v))
        p.copy_(_select(keep, p, p - _scaled(update, scale, sl)))


def _pieces(param: torch.Tensor, spans: Optional[torch.Tensor]) -> list[slice]:
    if spans is None:
        return [slice(0, param.numel())]
    return [slice(int(a), int(b)) for a, b in spans.tolist() if b > a]


def _effective_grad(p: torch.Tensor, g: torch.Tensor, pull: Optional[Pull], sl: slice) -> torch.Tensor:
    if pull is None:
        return g
    lam, curvature, offset = pull
    return g + lam * (curvature[sl] * p - offset[sl])


def _frozen(scale: Optional[torch.Tensor], sl: slice) -> Optional[torch.Tensor]:
    return None if scale is None else scale[sl] == 0


def _scaled(update: torch.Tensor, scale: Optional[torch.Tensor], sl: slice) -> torch.Tensor:
    if scale is None:
        return update
    s = scale[sl]
    return update if s.dtype == torch.uint8 else update * s


def _select(keep: Optional[torch.Tensor], old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    return new if keep is None else torch.where(keep, old, new)
