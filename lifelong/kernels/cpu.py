"""The C/OpenMP implementation of ``reference.py``: one pass over memory per update.

``load_kernels()`` builds (or finds cached) ``cpu_update.c`` and returns the two update
functions with the reference's signatures. The calls go through ctypes, which releases
the GIL, with the tensors' data pointers; every tensor must be a contiguous CPU tensor of
the parameter's size (checked here, since C cannot). The thread count is torch's
(``torch.get_num_threads()``), read per call; small updates run on one thread.
"""

from __future__ import annotations

import ctypes
from typing import Callable, Optional

import torch

from lifelong.kernels import cpu_build
from lifelong.kernels.reference import Pull

_P, _I64, _INT, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_SGD_ARGS = [_P, _P, _P, _I64, _P, _INT, _P, _I64, _P, _P, _F, _F, _F, _F, _INT, _INT, _INT]
_ADAM_ARGS = [_P, _P, _P, _P, _I64, _P, _INT, _P, _I64, _P, _P, _F,
              _F, _F, _F, _F, _F, _F, _F, _F, _INT, _INT]
_SCALE_KIND = {torch.uint8: 1, torch.bool: 1, torch.float32: 2}


def load_kernels() -> tuple[Callable[..., None], Callable[..., None]]:
    """``(sgd_update, adam_update)`` backed by the compiled library; raises
    ``cpu_build.KernelBuildError`` when it cannot be built or loaded."""
    lib = cpu_build.load()
    c_sgd, c_adam = lib.lifelong_sgd, lib.lifelong_adam
    c_sgd.argtypes, c_sgd.restype = _SGD_ARGS, None
    c_adam.argtypes, c_adam.restype = _ADAM_ARGS, None

    def sgd_update(param: torch.Tensor, grad: torch.Tensor, momentum_buffer: Optional[torch.Tensor], *,
                   lr: float, momentum: float, weight_decay: float,
                   scale: Optional[torch.Tensor] = None, spans: Optional[torch.Tensor] = None,
                   pull: Optional[Pull] = None) -> None:
        n = param.numel()
        if momentum and momentum_buffer is None:
            raise ValueError("momentum != 0 needs a momentum_buffer")
        lam, curvature, offset = pull if pull is not None else (0.0, None, None)
        c_sgd(_ptr(param, n, "param"), _ptr(grad, n, "grad"),
              _ptr(momentum_buffer, n, "momentum_buffer") if momentum else None, n,
              *_scale(scale, n), *_spans(spans),
              _ptr(curvature, n, "curvature") if pull is not None else None,
              _ptr(offset, n, "offset") if pull is not None else None, lam,
              lr, momentum, weight_decay, 1 if momentum else 0, 1 if weight_decay else 0,
              torch.get_num_threads())

    def adam_update(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                    exp_avg_sq: torch.Tensor, *, step: int, lr: float, beta1: float, beta2: float,
                    eps: float, weight_decay: float, decoupled: bool,
                    scale: Optional[torch.Tensor] = None, spans: Optional[torch.Tensor] = None,
                    pull: Optional[Pull] = None) -> None:
        n = param.numel()
        lam, curvature, offset = pull if pull is not None else (0.0, None, None)
        # The scalars as the reference computes them (in double, rounded to fp32 by torch).
        bias1 = 1 - beta1 ** step
        bias2_sqrt = (1 - beta2 ** step) ** 0.5
        c_adam(_ptr(param, n, "param"), _ptr(grad, n, "grad"), _ptr(exp_avg, n, "exp_avg"),
               _ptr(exp_avg_sq, n, "exp_avg_sq"), n, *_scale(scale, n), *_spans(spans),
               _ptr(curvature, n, "curvature") if pull is not None else None,
               _ptr(offset, n, "offset") if pull is not None else None, lam,
               1 - beta1, beta2, 1 - beta2, lr / bias1, bias2_sqrt, eps, weight_decay,
               lr * weight_decay, 0 if not weight_decay else (2 if decoupled else 1),
               torch.get_num_threads())

    return sgd_update, adam_update


def _ptr(t: torch.Tensor, n: int, name: str, dtype: torch.dtype = torch.float32) -> int:
    """``t``'s data pointer, once it is known to be a contiguous CPU tensor of ``n`` elements
    (the C side trusts it). Lean: this runs several times per update."""
    if t.dtype != dtype or t.numel() != n or not t.is_contiguous() or not t.is_cpu:
        raise ValueError(f"{name} must be a contiguous CPU {dtype} tensor of {n} elements, not "
                         f"{t.dtype} {tuple(t.shape)} on {t.device} (contiguous: {t.is_contiguous()})")
    return t.data_ptr()


def _scale(scale: Optional[torch.Tensor], n: int) -> tuple[Optional[int], int]:
    if scale is None:
        return None, 0
    kind = _SCALE_KIND.get(scale.dtype)
    if kind is None:
        raise ValueError(f"scale must be uint8 or float32, not {scale.dtype}")
    return _ptr(scale, n, "scale", scale.dtype), kind


def _spans(spans: Optional[torch.Tensor]) -> tuple[Optional[int], int]:
    if spans is None:
        return None, -1  # "no spans": an empty spans tensor's pointer may be NULL too
    if spans.dim() != 2 or spans.shape[1] != 2:
        raise ValueError(f"spans must have shape (k, 2), not {tuple(spans.shape)}")
    k = spans.shape[0]
    return _ptr(spans, 2 * k, "spans", torch.int64), k
