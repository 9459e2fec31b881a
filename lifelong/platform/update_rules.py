"""How each parameter may move: update masks and quadratic pulls, given per whole parameter
by strategies and turned into per-flat-tensor plans the fused optimizer step follows.

A mask holds values in [0, 1]: 0 freezes an element (its value and optimizer state stay
bit-identical through every step, weight decay included), ``s`` in (0, 1] moves it by ``s``
times the dense step's change. Its shape is the parameter's (elements), ``(shape[0],)``
(rows: a unit's incoming weights, one expert of a stacked ``(experts, ...)`` tensor) or
``()`` (the whole tensor). A pull adds ``lam * (curvature * param - offset)`` to the gradient
inside the step (EWC's penalty, without a separate pass).

Every rank must set the same rules (like edits in ``ctx.gathered``): each maps them onto
its own partition through ``partition_layout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from lifelong.platform.partition_layout import Fragment, Layout, flat_slice, slice_of

MIN_MEAN_SPAN = 16  # shorter runs of active elements are cheaper as an element mask


@dataclass
class UpdatePlan:
    """What the fused step does to one flat tensor (see lifelong/kernels/reference.py)."""

    scale: Optional[torch.Tensor] = None  # uint8 or float32 per element; None = all 1
    spans: Optional[torch.Tensor] = None  # (k, 2) active [start, stop); None = everywhere
    curvature: Optional[torch.Tensor] = None  # the pull's, per element of the flat tensor
    offset: Optional[torch.Tensor] = None
    lam: float = 1.0

    @property
    def frozen(self) -> bool:
        return self.spans is not None and self.spans.numel() == 0


class UpdateRules:
    """Masks and pulls by parameter name, and the plans they make on this rank's layout."""

    def __init__(self, shapes: dict[str, torch.Size]) -> None:
        self.shapes = shapes
        self.masks: dict[str, torch.Tensor] = {}
        self.pulls: dict[str, tuple[float, torch.Tensor, torch.Tensor]] = {}
        self._plans: Optional[dict[int, UpdatePlan]] = None

    # -- what strategies say ---------------------------------------------------------------
    def set_mask(self, name: str, mask: Optional[torch.Tensor]) -> None:
        if mask is None:
            self._shape(name)
            self.masks.pop(name, None)
        else:
            self.masks[name] = self.checked_mask(name, mask)
        self._plans = None

    def checked_mask(self, name: str, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` as a float32 CPU copy, or ValueError (KeyError: no such parameter)."""
        shape = self._shape(name)
        mask = torch.as_tensor(mask).detach().to("cpu", torch.float32).clone()
        if tuple(mask.shape) not in {tuple(shape), (shape[0],) if len(shape) else (), ()}:
            raise ValueError(f"update mask for {name!r} has shape {tuple(mask.shape)}; expected "
                             f"the parameter's {tuple(shape)}, its rows ({shape[0] if len(shape) else 1},) or ()")
        if not bool(((mask >= 0) & (mask <= 1)).all()):
            raise ValueError(f"update mask for {name!r} has values outside [0, 1]")
        return mask

    def set_pull(self, name: str, lam: float, curvature: Optional[torch.Tensor],
                 offset: Optional[torch.Tensor]) -> None:
        shape = self._shape(name)
        if curvature is None or offset is None or lam == 0:
            self.pulls.pop(name, None)
        else:
            for what, value in (("curvature", curvature), ("offset", offset)):
                if tuple(value.shape) != tuple(shape):
                    raise ValueError(f"pull {what} for {name!r} has shape {tuple(value.shape)}, "
                                     f"the parameter {tuple(shape)}")
            self.pulls[name] = (float(lam), curvature.detach(), offset.detach())
        self._plans = None

    def element_mask(self, name: str) -> Optional[torch.Tensor]:
        """``name``'s mask expanded to the parameter's shape (None: moves freely)."""
        mask = self.masks.get(name)
        if mask is None:
            return None
        shape = self.shapes[name]
        if mask.dim() == 1 and len(shape) > 1:
            mask = mask.view(-1, *([1] * (len(shape) - 1)))
        return mask.expand(shape)

    # -- what the optimizer follows ----------------------------------------------------------
    def plans(self, layout: Layout) -> dict[int, UpdatePlan]:
        """Plans keyed by ``id`` of the flat tensor they apply to; rebuilt after a change."""
        if self._plans is None:
            self._plans = build_plans(self, layout)
        return self._plans

    def _shape(self, name: str) -> torch.Size:
        if name not in self.shapes:
            raise KeyError(f"no trainable parameter named {name!r}")
        return self.shapes[name]


def build_plans(rules: UpdateRules, layout: Layout) -> dict[int, UpdatePlan]:
    flats = {id(f.flat): f.flat for frags in layout.values() for f in frags}
    plans: dict[int, UpdatePlan] = {}
    for key, flat in flats.items():
        parts = [(name, f) for name, frags in layout.items() for f in frags if f.flat is flat]
        masked = [(n, f) for n, f in parts if n in rules.masks]
        pulled = [(n, f) for n, f in parts if n in rules.pulls]
        if not masked and not pulled:
            continue
        plan = UpdatePlan()
        if masked:
            scale = torch.ones(flat.numel(), dtype=torch.float32)
            for name, f in masked:
                flat_slice(f, scale).copy_(slice_of(rules.element_mask(name), f))
            plan.scale, plan.spans = compact(scale)
        if len(pulled) == 1 and len(parts) == 1 and _whole(pulled[0][1], flat, rules.pulls[pulled[0][0]][1]):
            # A whole parameter (plain worker, ZeRO-0): the strategy's own tensors, no copy.
            plan.lam, curvature, offset = rules.pulls[pulled[0][0]]
            plan.curvature, plan.offset = curvature.reshape(-1), offset.reshape(-1)
        elif pulled:  # slices of many parameters, lam folded in
            plan.curvature = torch.zeros(flat.numel(), dtype=torch.float32)
            plan.offset = torch.zeros(flat.numel(), dtype=torch.float32)
            for name, f in pulled:
                lam, curvature, offset = rules.pulls[name]
                flat_slice(f, plan.curvature).copy_(slice_of(curvature, f).to("cpu") * lam)
                flat_slice(f, plan.offset).copy_(slice_of(offset, f).to("cpu") * lam)
        plans[key] = _to(plan, flat.device)
    return plans


def compact(scale: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The cheapest exact form of a per-element scale: spans of active elements when they
    come in runs (rows, blocks), a uint8 mask for scattered 0/1 values, float32 for soft
    values; ``(None, None)`` for all ones."""
    binary = bool(((scale == 0) | (scale == 1)).all())
    if binary and bool((scale == 1).all()):
        return None, None
    spans = active_spans(scale != 0)
    long_runs = spans.shape[0] == 0 or int((spans[:, 1] - spans[:, 0]).sum()) >= MIN_MEAN_SPAN * spans.shape[0]
    if binary:
        return (None, spans) if long_runs else (scale.to(torch.uint8), None)
    return scale, spans if long_runs else None


def active_spans(active: torch.Tensor) -> torch.Tensor:
    """``(k, 2)`` int64 ``[start, stop)`` of the runs of True in a 1-D bool tensor."""
    edges = torch.diff(active.to(torch.int8), prepend=torch.zeros(1, dtype=torch.int8),
                       append=torch.zeros(1, dtype=torch.int8))
    starts = (edges == 1).nonzero().view(-1)
    stops = (edges == -1).nonzero().view(-1)
    return torch.stack([starts, stops], dim=1).to(torch.int64)


def reset_state(optimizer_state: dict, keys: tuple[str, ...], fragments: list[Fragment],
                mask: Optional[torch.Tensor]) -> None:
    """Zero ``keys`` of one parameter's optimizer state on this rank's ``fragments``, where
    the whole-parameter bool ``mask`` is True (everywhere if None): a local write to just
    the state this rank holds, no collective."""
    for f in fragments:
        state = optimizer_state.get(f.flat)
        if not state:  # no step taken yet: nothing to reset
            continue
        local = None if mask is None else slice_of(mask, f).to(f.flat.device)
        for key in keys:
            if key in state:
                target = flat_slice(f, state[key])
                if local is None:
                    target.zero_()
                else:
                    target.masked_fill_(local, 0.0)


def _to(plan: UpdatePlan, device: torch.device) -> UpdatePlan:
    move = (lambda t: None if t is None else t.to(device))
    return UpdatePlan(move(plan.scale), plan.spans, move(plan.curvature), move(plan.offset), plan.lam)


def _whole(fragment: Fragment, flat: torch.Tensor, like: torch.Tensor) -> bool:
    return (fragment.flat_start == 0 and fragment.numel == flat.numel() == like.numel()
            and like.is_contiguous() and like.dtype == torch.float32 and like.device == flat.device)
