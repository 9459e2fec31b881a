"""The specification of lifelong's fused updates, in plain torch: always available, and the
implementation every fused kernel (``cpu.py``, ``triton_update.py``) is tested against. It
is also the fallback where no kernel builds, so it is whole-tensor torch ops, never a
Python loop over spans.

Every update works on one flat, contiguous fp32 tensor at a time: a whole parameter on a
plain worker and at ZeRO-0, this rank's flat partition at ZeRO 1-3. All tensors of one
call have the same number of elements ``n`` (state tensors are updated in place).

Three optional inputs shape an update; each is ``None`` for "not used":

- ``scale``: one value per element, uint8 or bool (0 or 1) or float32 in [0, 1]. ``0``
  freezes the element: the parameter *and* its optimizer state (momentum buffer, Adam
  moments) are bit-identical after the step, whatever the weight decay. A value ``s`` in
  (0, 1] keeps the state update of the dense step and moves the parameter by ``s`` times
  the dense step's change.
- ``spans``: int64 ``(k, 2)`` ``[start, stop)`` element ranges: only these elements are
  touched (the rest are frozen, as if their scale were 0), so a row-sparse update costs in
  proportion to its active rows. ``scale``, if also given, still applies inside the spans.
  Precondition (``update_rules.active_spans`` makes such spans; the kernels do not check
  it, each step): ``0 <= start <= stop <= n``, sorted by ``start``, pairwise disjoint. An
  empty span (``start == stop``) covers nothing. The C kernel clamps every index to
  ``[0, n]``, so a broken span can never reach outside the tensor, but overlapping spans
  may be updated twice.
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

``sgd_update_many`` / ``adam_update_many`` update a list of tensors (``UpdateItem``) with
the same hyper-parameters: exactly the single-tensor update of each, in one call, so a
kernel can share one thread team and balance the work by elements across tensors. The
gradients may come apart from the items (``grads=``, any shape of ``n`` contiguous
elements): a caller whose tensors stay but whose gradients are new every step (the
optimizer, after ``zero_grad(set_to_none=True)``) keeps its items from step to step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

Pull = tuple[float, torch.Tensor, torch.Tensor]


@dataclass(frozen=True, eq=False)
class UpdateItem:
    """One flat tensor's share of a multi-tensor update: its state tensors and masking.

    Frozen and compared by identity: a kernel may keep what it derived from an item (the
    C kernel's packed pointers) for as long as the item lives, so build a new item rather
    than swap a tensor's storage under an old one (``t.data = ...``)."""

    param: torch.Tensor
    grad: Optional[torch.Tensor]  # None: the call passes it (``grads=``)
    momentum_buffer: Optional[torch.Tensor] = None  # SGD with momentum
    exp_avg: Optional[torch.Tensor] = None  # Adam
    exp_avg_sq: Optional[torch.Tensor] = None  # Adam
    scale: Optional[torch.Tensor] = None
    spans: Optional[torch.Tensor] = None
    pull: Optional[Pull] = None


def sgd_update(param: torch.Tensor, grad: torch.Tensor, momentum_buffer: Optional[torch.Tensor], *,
               lr: float, momentum: float, weight_decay: float,
               scale: Optional[torch.Tensor] = None, spans: Optional[torch.Tensor] = None,
               pull: Optional[Pull] = None) -> None:
    """One SGD(-momentum) step in place; ``momentum_buffer`` is None when ``momentum == 0``."""
    keep = _frozen(param, scale, spans)
    if keep is _ALL_FROZEN:
        return
    p = param
    d = _effective_grad(p, grad, pull)
    if weight_decay:
        d = d + weight_decay * p
    if momentum:
        buf = momentum_buffer
        update = momentum * buf + d
        buf.copy_(_select(keep, buf, update))
    else:
        update = d
    p.copy_(_select(keep, p, p - lr * _scaled(update, scale)))


def adam_update(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                exp_avg_sq: torch.Tensor, *, step: int, lr: float, beta1: float, beta2: float,
                eps: float, weight_decay: float, decoupled: bool,
                scale: Optional[torch.Tensor] = None, spans: Optional[torch.Tensor] = None,
                pull: Optional[Pull] = None) -> None:
    """One Adam (``decoupled=False``) or AdamW (``decoupled=True``) step in place."""
    keep = _frozen(param, scale, spans)
    if keep is _ALL_FROZEN:
        return
    bias1 = 1 - beta1 ** step
    bias2_sqrt = (1 - beta2 ** step) ** 0.5
    step_size = lr / bias1
    p, m, v = param, exp_avg, exp_avg_sq
    d = _effective_grad(p, grad, pull)
    if weight_decay and not decoupled:
        d = d + weight_decay * p
    new_m = m + (1 - beta1) * (d - m)
    new_v = beta2 * v + (1 - beta2) * d * d
    update = step_size * new_m / (new_v.sqrt() / bias2_sqrt + eps)
    if weight_decay and decoupled:
        update = update + (lr * weight_decay) * p
    m.copy_(_select(keep, m, new_m))
    v.copy_(_select(keep, v, new_v))
    p.copy_(_select(keep, p, p - _scaled(update, scale)))


def per_item(sgd: Callable[..., None], adam: Callable[..., None]) -> tuple[Callable[..., None], Callable[..., None]]:
    """Multi-tensor updates as a loop over single-tensor ``sgd`` and ``adam`` updates, with
    the same hyper-parameters for all items (``grads[i]``, if given, is item ``i``'s
    gradient; Adam's items share one ``step``)."""

    def sgd_update_many(items: Sequence[UpdateItem], *, lr: float, momentum: float,
                        weight_decay: float, grads: Optional[Sequence[torch.Tensor]] = None) -> None:
        for it, grad in zip(items, item_grads(items, grads)):
            sgd(it.param, grad, it.momentum_buffer, lr=lr, momentum=momentum,
                weight_decay=weight_decay, scale=it.scale, spans=it.spans, pull=it.pull)

    def adam_update_many(items: Sequence[UpdateItem], *, step: int, lr: float, beta1: float,
                         beta2: float, eps: float, weight_decay: float, decoupled: bool,
                         grads: Optional[Sequence[torch.Tensor]] = None) -> None:
        for it, grad in zip(items, item_grads(items, grads)):
            adam(it.param, grad, it.exp_avg, it.exp_avg_sq, step=step, lr=lr, beta1=beta1,
                 beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled,
                 scale=it.scale, spans=it.spans, pull=it.pull)

    return sgd_update_many, adam_update_many


sgd_update_many, adam_update_many = per_item(sgd_update, adam_update)


def item_grads(items: Sequence[UpdateItem],
               grads: Optional[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Each item's gradient as a flat tensor: ``grads[i]`` if given, else the item's own."""
    if grads is None:
        if any(it.grad is None for it in items):
            raise ValueError("an item's grad is missing (pass grads=)")
        return [it.grad.reshape(-1) for it in items]
    if len(grads) != len(items):
        raise ValueError(f"{len(grads)} grads for {len(items)} items")
    return [g.reshape(-1) for g in grads]


_ALL_FROZEN = torch.zeros(0, dtype=torch.bool)  # a marker: nothing to update


def span_mask(spans: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Bool ``(n,)``: True inside the spans. A +1 at every start and a -1 at every stop,
    summed up: linear in ``n`` and ``k``, however many spans (empty ones cancel out)."""
    spans = spans.to(device=device, dtype=torch.int64).clamp(0, n)
    spans = spans[spans[:, 1] > spans[:, 0]]
    edges = torch.zeros(n + 1, dtype=torch.int32, device=device)
    ones = torch.ones(spans.shape[0], dtype=torch.int32, device=device)
    edges.index_add_(0, spans[:, 0], ones)
    edges.index_add_(0, spans[:, 1], -ones)
    return torch.cumsum(edges[:n], 0, dtype=torch.int32) > 0


def _frozen(param: torch.Tensor, scale: Optional[torch.Tensor],
            spans: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Bool: True where the element keeps its bits; None if none does; ``_ALL_FROZEN``
    when no element is active (the step writes nothing)."""
    keep = None if scale is None else scale == 0
    if spans is not None:
        if spans.shape[0] == 0:
            return _ALL_FROZEN
        outside = ~span_mask(spans, param.numel(), param.device)
        keep = outside if keep is None else keep | outside
    return keep


def _effective_grad(p: torch.Tensor, g: torch.Tensor, pull: Optional[Pull]) -> torch.Tensor:
    if pull is None:
        return g
    lam, curvature, offset = pull
    return g + lam * (curvature * p - offset)


def _scaled(update: torch.Tensor, scale: Optional[torch.Tensor]) -> torch.Tensor:
    if scale is None or not scale.is_floating_point():
        return update  # 0/1: the zeros are frozen by _select
    return update * scale


def _select(keep: Optional[torch.Tensor], old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    return new if keep is None else torch.where(keep, old, new)
