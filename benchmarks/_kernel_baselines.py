"""The steps benchmarks/kernels.py times, each one update of every tensor of a ``Problem``:
lifelong's fused kernels and what they are measured against -- what a user writes with
torch.optim (plus the ops that add EWC's penalty and keep frozen entries exactly),
torch.compile of the reference, DeepSpeed's CPU Adam and torch's own fused Adam.

``check`` runs each once on small tensors against ``lifelong/kernels/reference.py``, so
that a ratio is never one of a wrong baseline.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lifelong.kernels import REFERENCE, Kernels, reference  # noqa: E402
from lifelong.kernels.reference import UpdateItem  # noqa: E402

Step = Callable[[], None]
Factory = Callable[["Problem"], Step]

SGD = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)
ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
LAM = 0.5  # EWC's lambda
FIRST_STEP = 10  # Adam's state has taken 9 steps: the bias correction is not trivial


@dataclass
class Problem:
    """One model's flat fp32 tensors and their optimizer state, one entry per tensor."""

    shapes: list[tuple[int, int]]
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    bufs: list[torch.Tensor]  # SGD momentum
    curvature: list[torch.Tensor]  # EWC: sum of Fishers
    offset: list[torch.Tensor]  # EWC: sum of Fisher * anchor
    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]
    masks: list[torch.Tensor]  # uint8, 0 = frozen
    keep: list[torch.Tensor]  # bool, masks == 0: what an eager step restores (computed once)


def make_problem(shapes: list[tuple[int, int]], frozen: float = 0.5, seed: int = 0) -> Problem:
    gen = torch.Generator().manual_seed(seed)

    def each(draw: Callable[[int], torch.Tensor]) -> list[torch.Tensor]:
        return [draw(rows * cols) for rows, cols in shapes]

    masks = each(lambda n: (torch.rand(n, generator=gen) >= frozen).to(torch.uint8))
    return Problem(
        shapes=list(shapes), params=each(lambda n: torch.randn(n, generator=gen)),
        grads=each(lambda n: 0.1 * torch.randn(n, generator=gen)),
        bufs=each(lambda n: 0.1 * torch.randn(n, generator=gen)),
        curvature=each(lambda n: torch.rand(n, generator=gen)),
        offset=each(lambda n: 0.1 * torch.randn(n, generator=gen)),
        exp_avg=each(lambda n: 0.01 * torch.randn(n, generator=gen)),
        exp_avg_sq=each(lambda n: 1e-4 * torch.rand(n, generator=gen)),
        masks=masks, keep=[m == 0 for m in masks])


def clone(pb: Problem) -> Problem:
    fields = ("params", "grads", "bufs", "curvature", "offset", "exp_avg", "exp_avg_sq", "masks", "keep")
    return replace(pb, **{f: [t.clone() for t in getattr(pb, f)] for f in fields})


def active_rows(shapes: list[tuple[int, int]], fraction: float, seed: int = 1) -> list[torch.Tensor]:
    """A random ``fraction`` of each 2-D tensor's rows (at least one), sorted."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(rows, generator=gen)[:max(1, round(fraction * rows))].sort().values
            for rows, _ in shapes]


def row_spans(shapes: list[tuple[int, int]], fraction: float) -> list[torch.Tensor]:
    """The active rows as element spans, a run of adjacent rows as one span (as a caller
    that builds spans from a row mask would pass them)."""
    spans = []
    for rows, (_, cols) in zip(active_rows(shapes, fraction), shapes):
        starts_run = torch.ones_like(rows, dtype=torch.bool)
        starts_run[1:] = rows[1:] != rows[:-1] + 1
        ends_run = torch.ones_like(starts_run)
        ends_run[:-1] = starts_run[1:]
        spans.append(torch.stack([rows[starts_run] * cols, (rows[ends_run] + 1) * cols], 1))
    return spans


def row_masks(shapes: list[tuple[int, int]], fraction: float) -> list[torch.Tensor]:
    masks = [torch.zeros(rows, cols, dtype=torch.uint8) for rows, cols in shapes]
    for m, r in zip(masks, active_rows(shapes, fraction)):
        m[r] = 1
    return [m.view(-1) for m in masks]


def fused_sgd(k: Kernels, scales: Optional[str] = "masks", rows: Optional[float] = None) -> Factory:
    """SGD-momentum + EWC pull with ``k``: element mask (``scales="masks"``), a row mask
    (``"rows"``), none, or only the ``rows`` fraction's spans. One many-call per step, as
    the engine's optimizer makes it: items kept from step to step, gradients passed apart."""
    def factory(pb: Problem) -> Step:
        scale = {"masks": pb.masks, "rows": row_masks(pb.shapes, rows or 0.0), None: None}[scales]
        spans = row_spans(pb.shapes, rows) if rows is not None and scales is None else None
        items = [UpdateItem(p, None, momentum_buffer=pb.bufs[i],
                            scale=None if scale is None else scale[i],
                            spans=None if spans is None else spans[i],
                            pull=(LAM, pb.curvature[i], pb.offset[i]))
                 for i, p in enumerate(pb.params)]
        return lambda: k.sgd_update_many(items, **SGD, grads=pb.grads)
    return factory


def fused_adam(k: Kernels, masked: bool) -> Factory:
    def factory(pb: Problem) -> Step:
        step_no = [FIRST_STEP - 1]
        items = [UpdateItem(p, None, exp_avg=pb.exp_avg[i], exp_avg_sq=pb.exp_avg_sq[i],
                            scale=pb.masks[i] if masked else None) for i, p in enumerate(pb.params)]

        def step() -> None:
            step_no[0] += 1
            k.adam_update_many(items, step=step_no[0], **ADAM, decoupled=False, grads=pb.grads)
        return step
    return factory


class _FrozenRestore:
    """Keeps frozen entries exactly, around a step that moves them: copy before, restore after."""

    def __init__(self, tensors: list[torch.Tensor], keep: list[torch.Tensor]) -> None:
        self.tensors, self.keep = tensors, keep
        self.saved = [torch.empty_like(t) for t in tensors]  # allocated once, not per step

    def save(self) -> None:
        for t, s in zip(self.tensors, self.saved):
            s.copy_(t)

    def restore(self) -> None:
        for t, s, keep in zip(self.tensors, self.saved, self.keep):
            torch.where(keep, s, t, out=t)


def eager_sgd(pb: Problem) -> Step:
    """torch.optim.SGD, the EWC penalty gradient added by separate ops, frozen entries restored."""
    for p, g in zip(pb.params, pb.grads):
        p.grad = g
    opt = torch.optim.SGD(pb.params, lr=SGD["lr"], momentum=SGD["momentum"],
                          weight_decay=SGD["weight_decay"])
    for p, b in zip(pb.params, pb.bufs):
        opt.state[p]["momentum_buffer"] = b
    frozen = _FrozenRestore(pb.params + pb.bufs, pb.keep * 2)

    @torch.no_grad()
    def step() -> None:
        for p, curvature, offset in zip(pb.params, pb.curvature, pb.offset):
            p.grad.add_(LAM * (curvature * p - offset))
        frozen.save()
        opt.step()
        frozen.restore()
    return step


def _torch_adam(pb: Problem, **options: bool) -> torch.optim.Adam:
    for p, g in zip(pb.params, pb.grads):
        p.grad = g
    opt = torch.optim.Adam(pb.params, lr=ADAM["lr"], betas=(ADAM["beta1"], ADAM["beta2"]),
                           eps=ADAM["eps"], weight_decay=ADAM["weight_decay"], **options)
    for p, m, v in zip(pb.params, pb.exp_avg, pb.exp_avg_sq):
        opt.state[p].update(step=torch.tensor(float(FIRST_STEP - 1), device=p.device), exp_avg=m,
                            exp_avg_sq=v)
    return opt


def eager_adam(pb: Problem) -> Step:
    """torch.optim.Adam (its default implementation), frozen entries and moments restored."""
    opt = _torch_adam(pb)
    frozen = _FrozenRestore(pb.params + pb.exp_avg + pb.exp_avg_sq, pb.keep * 3)

    def step() -> None:
        frozen.save()
        opt.step()
        frozen.restore()
    return step


def torch_fused_adam(pb: Problem) -> Step:
    """torch.optim.Adam(fused=True): torch's own one-pass Adam, dense only."""
    return _torch_adam(pb, fused=True).step


def deepspeed_adam(pb: Problem) -> Step:
    """DeepSpeedCPUAdam (AVX, OpenMP; JIT-built on first use), Adam with L2 decay, dense only."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    for p, g in zip(pb.params, pb.grads):
        p.grad = g
    opt = DeepSpeedCPUAdam(pb.params, lr=ADAM["lr"], betas=(ADAM["beta1"], ADAM["beta2"]),
                           eps=ADAM["eps"], weight_decay=ADAM["weight_decay"], adamw_mode=False)
    for p, m, v in zip(pb.params, pb.exp_avg, pb.exp_avg_sq):
        opt.state[p].update(step=FIRST_STEP - 1, exp_avg=m, exp_avg_sq=v)
    return opt.step


def _reference_sgd_all(params, grads, bufs, masks, curvature, offset):  # type: ignore[no-untyped-def]
    for p, g, b, m, c, o in zip(params, grads, bufs, masks, curvature, offset):
        reference.sgd_update(p, g, b, **SGD, scale=m, pull=(LAM, c, o))


def _reference_adam_all(params, grads, exp_avg, exp_avg_sq, masks, step):  # type: ignore[no-untyped-def]
    for p, g, m, v, s in zip(params, grads, exp_avg, exp_avg_sq, masks):
        reference.adam_update(p, g, m, v, step=step, **ADAM, decoupled=False, scale=s)


_compiled_sgd_all = torch.compile(_reference_sgd_all)
_compiled_adam_all = torch.compile(_reference_adam_all)


def compiled_sgd(pb: Problem) -> Step:
    """Inductor's code for the reference's masked SGD + pull, one graph over all tensors."""
    return lambda: _compiled_sgd_all(pb.params, pb.grads, pb.bufs, pb.masks, pb.curvature, pb.offset)


def compiled_adam(pb: Problem) -> Step:
    """The same for masked Adam; the step number is a tensor, so a new step compiles nothing."""
    step_no = torch.tensor(float(FIRST_STEP - 1))

    def step() -> None:
        step_no.add_(1)
        _compiled_adam_all(pb.params, pb.grads, pb.exp_avg, pb.exp_avg_sq, pb.masks, step_no)
    return step


def check(candidates: dict[str, tuple[Factory, Factory]], shapes: list[tuple[int, int]]
          ) -> tuple[list[str], dict[str, str]]:
    """Each candidate's step against the step it must equal, once on fresh copies of one
    small problem: close, and every entry that step leaves bit-identical (frozen) is
    bit-identical. Returns the failures and, by name, the candidates that cannot run here."""
    base = make_problem(shapes, seed=1)
    failures, unavailable = [], {}
    for name, (candidate, expected) in candidates.items():
        got, want = clone(base), clone(base)
        try:
            candidate(got)()
        except Exception as exc:  # a baseline this machine cannot build or compile
            unavailable[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:150]}"
            continue
        expected(want)()
        for field in ("params", "bufs", "exp_avg", "exp_avg_sq"):
            for a, b, before in zip(getattr(got, field), getattr(want, field), getattr(base, field)):
                frozen = b == before
                if not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
                    failures.append(f"{name}: {field} differs from the expected step by "
                                    f"{(a - b).abs().max().item():.3g}")
                elif not torch.equal(a[frozen], before[frozen]):
                    failures.append(f"{name}: frozen {field} entries moved")
                else:
                    continue
                break
    return failures, unavailable


def reference_steps() -> dict[str, Factory]:
    """What each family of candidates must compute: masked SGD + pull, masked and dense Adam."""
    return {"sgd": fused_sgd(REFERENCE), "adam": fused_adam(REFERENCE, masked=True),
            "adam dense": fused_adam(REFERENCE, masked=False)}
