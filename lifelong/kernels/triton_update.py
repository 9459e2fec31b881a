"""The Triton implementation of ``reference.py`` for CUDA tensors: one pass over memory.

Each program updates one chunk of at most ``BLOCK`` consecutive elements. Without spans
the chunks tile the tensor; with spans, ``span_chunks`` cuts every span into chunks (a
span's last chunk is short), so a row-sparse step launches programs only for its active
rows. Chunks of different spans never overlap (spans are disjoint), so they need no
synchronisation. Elements outside the spans are masked out of every load and store; an
element frozen by its scale is stored back with its own bits (see ``_pick``).

Float math follows the reference's order of operations, without FMA contraction
(``enable_fp_fusion=False``) and with round-to-nearest division and square root
(``div_rn``, ``sqrt_rn``) rather than the fast approximate ones: the kernels are
memory-bound, so exactness costs nothing measurable.
Parameters, gradients and state are fp32. Tests run this under ``TRITON_INTERPRET=1`` on
CPU tensors.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from lifelong.kernels.reference import Pull, per_item

BLOCK = 1024
_SCALE_KIND = {torch.uint8: 1, torch.bool: 1, torch.float32: 2}


@triton.jit
def _chunk(pid, starts, stops, n, HAS_SPANS: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """The offsets of this program's chunk and the mask of those inside it. ``ALIGNED``:
    every chunk starts and stops on a multiple of 16 elements (rows of such widths), which
    lets the loads and stores be vectorised."""
    if HAS_SPANS:
        lo = tl.load(starts + pid)
        hi = tl.load(stops + pid)
        if ALIGNED:
            lo = tl.multiple_of(lo, 16)
            hi = tl.multiple_of(hi, 16)
    else:
        lo = pid.to(tl.int64) * BLOCK
        hi = n
    offs = lo + tl.arange(0, BLOCK)
    return offs, offs < hi


@triton.jit
def _pick(keep, old, new):
    """``old`` where the element is frozen, else ``new``: stores of the whole chunk then stay
    vectorised (a per-element store mask would not), and a frozen element gets its own
    bits back, as in the C kernel. Elements outside the spans are never stored."""
    return tl.where(keep, old, new)


@triton.jit
def _sgd_kernel(P, G, B, S, C, O, starts, stops, n, lam, lr, mu, wd,
                HAS_SPANS: tl.constexpr, ALIGNED: tl.constexpr, PULL: tl.constexpr,
                DECAY: tl.constexpr, MOM: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr):
    offs, inside = _chunk(tl.program_id(0), starts, stops, n, HAS_SPANS, ALIGNED, BLOCK)
    p = tl.load(P + offs, mask=inside)
    d = tl.load(G + offs, mask=inside)
    if PULL:
        d = d + lam * (tl.load(C + offs, mask=inside) * p - tl.load(O + offs, mask=inside))
    if DECAY:
        d = d + wd * p
    u = d
    if MOM:
        b = tl.load(B + offs, mask=inside)
        u = mu * b + d
        new_b = u
    if SCALE != 0:
        s = tl.load(S + offs, mask=inside, other=0)
        if SCALE == 2:
            u = u * s
    new_p = p - lr * u
    if SCALE != 0:
        keep = s == 0
        new_p = _pick(keep, p, new_p)
        if MOM:
            new_b = _pick(keep, b, new_b)
    if MOM:
        tl.store(B + offs, new_b, mask=inside)
    tl.store(P + offs, new_p, mask=inside)


@triton.jit
def _adam_kernel(P, G, M, V, S, C, O, starts, stops, n, lam, omb1, b2, omb2, step_size,
                 bias2_sqrt, eps, wd, lr_wd,
                 HAS_SPANS: tl.constexpr, ALIGNED: tl.constexpr, PULL: tl.constexpr,
                 DECAY: tl.constexpr, SCALE: tl.constexpr, BLOCK: tl.constexpr):
    offs, inside = _chunk(tl.program_id(0), starts, stops, n, HAS_SPANS, ALIGNED, BLOCK)
    p = tl.load(P + offs, mask=inside)
    m = tl.load(M + offs, mask=inside)
    v = tl.load(V + offs, mask=inside, other=0.0)
    d = tl.load(G + offs, mask=inside)
    if PULL:
        d = d + lam * (tl.load(C + offs, mask=inside) * p - tl.load(O + offs, mask=inside))
    if DECAY == 1:
        d = d + wd * p
    nm = m + omb1 * (d - m)
    nv = b2 * v + (omb2 * d) * d
    denom = tl.div_rn(tl.sqrt_rn(nv), bias2_sqrt) + eps
    u = tl.div_rn(step_size * nm, denom)
    if DECAY == 2:
        u = u + lr_wd * p
    if SCALE != 0:
        s = tl.load(S + offs, mask=inside, other=0)
        if SCALE == 2:
            u = u * s
    new_p = p - u
    if SCALE != 0:
        keep = s == 0
        nm = _pick(keep, m, nm)
        nv = _pick(keep, v, nv)
        new_p = _pick(keep, p, new_p)
    tl.store(M + offs, nm, mask=inside)
    tl.store(V + offs, nv, mask=inside)
    tl.store(P + offs, new_p, mask=inside)


class Chunks(NamedTuple):
    starts: torch.Tensor  # int64, on the parameter's device
    stops: torch.Tensor
    aligned: bool  # every start and stop a multiple of 16


def span_chunks(spans: torch.Tensor, n: int, device: torch.device, block: int = BLOCK) -> Chunks:
    """Every span cut into chunks of at most ``block`` elements, in order, moved to
    ``device``. Costs one host sync when ``spans`` lives on the GPU."""
    a = spans[:, 0].clamp(0, n)
    b = spans[:, 1].clamp(0, n)
    counts = ((b - a).clamp(min=0) + block - 1) // block
    total, misaligned = (int(x) for x in torch.stack([counts.sum(), ((a | b) % 16).sum()]).tolist())
    span_of = torch.repeat_interleave(torch.arange(len(counts), device=spans.device), counts,
                                      output_size=total)
    first = torch.cumsum(counts, 0) - counts
    starts = a[span_of] + (torch.arange(total, device=spans.device) - first[span_of]) * block
    stops = torch.minimum(starts + block, b[span_of])
    return Chunks(starts.to(device, non_blocking=True), stops.to(device, non_blocking=True),
                  aligned=misaligned == 0 and block % 16 == 0)


def sgd_update(param: torch.Tensor, grad: torch.Tensor, momentum_buffer: Optional[torch.Tensor], *,
               lr: float, momentum: float, weight_decay: float,
               scale: Optional[torch.Tensor] = None, spans: Optional[torch.Tensor] = None,
               pull: Optional[Pull] = None) -> None:
    """``reference.sgd_update`` as one Triton kernel."""
    n = _numel(param, grad, momentum_buffer if momentum else None, *_pull_tensors(pull))
    if momentum and momentum_buffer is None:
        raise ValueError("momentum != 0 needs a momentum_buffer")
    grid, chunks = _grid(spans, n, param.device)
    if grid == 0:
        return
    lam, curvature, offset = pull if pull is not None else (0.0, None, None)
    _sgd_kernel[(grid,)](
        param, grad, momentum_buffer if momentum else None, _scale(scale, n), curvature, offset,
        chunks.starts, chunks.stops, n, float(lam), float(lr), float(momentum), float(weight_decay),
        HAS_SPANS=spans is not None, ALIGNED=chunks.aligned, PULL=pull is not None,
        DECAY=bool(weight_decay), MOM=bool(momentum),
        SCALE=_SCALE_KIND[scale.dtype] if scale is not None else 0, BLOCK=BLOCK, enable_fp_fusion=False)


def adam_update(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                exp_avg_sq: torch.Tensor, *, step: int, lr: float, beta1: float, beta2: float,
                eps: float, weight_decay: float, decoupled: bool,
                scale: Optional[torch.Tensor] = None, spans: Optional[torch.Tensor] = None,
                pull: Optional[Pull] = None) -> None:
    """``reference.adam_update`` as one Triton kernel."""
    n = _numel(param, grad, exp_avg, exp_avg_sq, *_pull_tensors(pull))
    grid, chunks = _grid(spans, n, param.device)
    if grid == 0:
        return
    lam, curvature, offset = pull if pull is not None else (0.0, None, None)
    bias1 = 1 - beta1 ** step
    bias2_sqrt = (1 - beta2 ** step) ** 0.5
    _adam_kernel[(grid,)](
        param, grad, exp_avg, exp_avg_sq, _scale(scale, n), curvature, offset, chunks.starts,
        chunks.stops, n, float(lam), float(1 - beta1), float(beta2), float(1 - beta2),
        float(lr / bias1), float(bias2_sqrt), float(eps), float(weight_decay), float(lr * weight_decay),
        HAS_SPANS=spans is not None, ALIGNED=chunks.aligned, PULL=pull is not None,
        DECAY=0 if not weight_decay else (2 if decoupled else 1),
        SCALE=_SCALE_KIND[scale.dtype] if scale is not None else 0, BLOCK=BLOCK, enable_fp_fusion=False)


def _grid(spans: Optional[torch.Tensor], n: int, device: torch.device) -> tuple[int, Chunks]:
    if spans is None:
        return triton.cdiv(n, BLOCK), Chunks(None, None, aligned=False)
    if spans.dim() != 2 or spans.shape[1] != 2 or spans.dtype != torch.int64:
        raise ValueError(f"spans must be int64 of shape (k, 2), not {spans.dtype} {tuple(spans.shape)}")
    chunks = span_chunks(spans, n, device)
    return len(chunks.starts), chunks


def _numel(param: torch.Tensor, *others: Optional[torch.Tensor]) -> int:
    n = param.numel()
    for t in (param, *others):
        if t is None:
            continue
        if t.dtype != torch.float32 or not t.is_contiguous() or t.numel() != n:
            raise ValueError(f"expected contiguous fp32 tensors of {n} elements, got {t.dtype} "
                             f"{tuple(t.shape)} (contiguous: {t.is_contiguous()})")
    return n


def _pull_tensors(pull: Optional[Pull]) -> tuple[torch.Tensor, ...]:
    return () if pull is None else (pull[1], pull[2])


def _scale(scale: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    if scale is None:
        return None
    if scale.dtype not in _SCALE_KIND or not scale.is_contiguous() or scale.numel() != n:
        raise ValueError(f"scale must be a contiguous uint8 or float32 tensor of {n} elements")
    return scale.view(torch.uint8) if scale.dtype == torch.bool else scale


# A launch costs microseconds on a GPU, not a thread team: the multi-tensor calls loop.
sgd_update_many, adam_update_many = per_item(sgd_update, adam_update)
