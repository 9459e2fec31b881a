"""The C/OpenMP implementation of ``reference.py``: one pass over memory per update, and one
C call (one OpenMP parallel region) per multi-tensor update.

``load_kernels()`` builds (or finds cached) ``cpu_update.c`` and returns the update
functions with the reference's signatures. The calls go through ctypes, which releases
the GIL, with the tensors' data pointers packed into an array of ``_Item`` structures;
every tensor must be a contiguous CPU tensor of the parameter's size (checked when it is
packed, since C cannot). The thread count is torch's (``torch.get_num_threads()``), read
per call; small updates run on one thread.

A many-call keeps the packed array while its ``UpdateItem``s live (``_Packer``): a caller
that passes the same items each step (the benchmark; any loop over fixed tensors) pays
for a dictionary lookup, not for checking and packing every tensor again (about 8 us per
tensor). Gradients passed apart (``grads=``, as the optimizer passes them: ``zero_grad``
leaves new ones every step) are checked and their pointers packed per call.
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch

from lifelong.kernels import cpu_build
from lifelong.kernels.reference import Pull, UpdateItem

if TYPE_CHECKING:
    from lifelong.kernels import Kernels

_P, _I64, _INT, _F, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_double
_SCALE_KIND = {torch.uint8: 1, torch.bool: 1, torch.float32: 2}


class _Item(ctypes.Structure):
    """One tensor of a call: ``Item`` in cpu_update.c."""

    _fields_ = [("param", _P), ("grad", _P), ("state1", _P), ("state2", _P), ("curvature", _P),
                ("offset", _P), ("scale", _P), ("spans", _P), ("n", _I64), ("n_spans", _I64),
                ("scale_kind", _I64), ("lam", _D)]


_ITEMS = ctypes.POINTER(_Item)
_SGD_ARGS = [_ITEMS, _P, _I64, _F, _F, _F, _INT, _INT, _INT]
_ADAM_ARGS = [_ITEMS, _P, _I64, _F, _F, _F, _F, _F, _F, _F, _F, _INT, _INT]


def load_kernels() -> Kernels:
    """The ``Kernels`` backed by the compiled library; raises ``cpu_build.KernelBuildError``
    when it cannot be built or loaded."""
    from lifelong.kernels import Kernels  # here: the package imports this module on demand

    lib = cpu_build.load()
    c_sgd, c_adam = lib.lifelong_sgd_many, lib.lifelong_adam_many
    c_sgd.argtypes, c_sgd.restype = _SGD_ARGS, None
    c_adam.argtypes, c_adam.restype = _ADAM_ARGS, None
    packer = _Packer()

    def sgd_update_many(items: Sequence[UpdateItem], *, lr: float, momentum: float,
                        weight_decay: float, grads: Optional[Sequence[torch.Tensor]] = None) -> None:
        if items:
            packed = packer.get(items, "sgd_momentum" if momentum else "sgd")
            c_sgd(packed.table, packed.grad_pointers(grads), len(items), lr, momentum, weight_decay,
                  1 if momentum else 0, 1 if weight_decay else 0, torch.get_num_threads())

    def adam_update_many(items: Sequence[UpdateItem], *, step: int, lr: float, beta1: float,
                         beta2: float, eps: float, weight_decay: float, decoupled: bool,
                         grads: Optional[Sequence[torch.Tensor]] = None) -> None:
        if items:
            packed = packer.get(items, "adam")
            _adam(c_adam, packed.table, packed.grad_pointers(grads), len(items), step, lr, beta1,
                  beta2, eps, weight_decay, decoupled)

    def sgd_update(param: torch.Tensor, grad: torch.Tensor, momentum_buffer: Optional[torch.Tensor], *,
                   lr: float, momentum: float, weight_decay: float,
                   scale: Optional[torch.Tensor] = None, spans: Optional[torch.Tensor] = None,
                   pull: Optional[Pull] = None) -> None:
        item = UpdateItem(param, grad, momentum_buffer=momentum_buffer, scale=scale, spans=spans, pull=pull)
        packed = _Packed([item], "sgd_momentum" if momentum else "sgd")
        c_sgd(packed.table, packed.grad_pointers(None), 1, lr, momentum, weight_decay,
              1 if momentum else 0, 1 if weight_decay else 0, torch.get_num_threads())

    def adam_update(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                    exp_avg_sq: torch.Tensor, *, step: int, lr: float, beta1: float, beta2: float,
                    eps: float, weight_decay: float, decoupled: bool,
                    scale: Optional[torch.Tensor] = None, spans: Optional[torch.Tensor] = None,
                    pull: Optional[Pull] = None) -> None:
        item = UpdateItem(param, grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, scale=scale,
                          spans=spans, pull=pull)
        packed = _Packed([item], "adam")
        _adam(c_adam, packed.table, packed.grad_pointers(None), 1, step, lr, beta1, beta2, eps,
              weight_decay, decoupled)

    return Kernels("cpu", sgd_update, adam_update, sgd_update_many, adam_update_many)


def _adam(c_adam: Callable[..., None], table: ctypes.Array, grads: Optional[ctypes.Array], count: int,
          step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
          decoupled: bool) -> None:
    # The scalars as the reference computes them (in double, rounded to fp32 by ctypes).
    bias1 = 1 - beta1 ** step
    bias2_sqrt = (1 - beta2 ** step) ** 0.5
    c_adam(table, grads, count, 1 - beta1, beta2, 1 - beta2, lr / bias1, bias2_sqrt, eps, weight_decay,
           lr * weight_decay, 0 if not weight_decay else (2 if decoupled else 1),
           torch.get_num_threads())


class _Packed:
    """The ``_Item`` array of a list of items, every tensor checked, and the sizes that
    gradients passed apart (``grads=``) are checked against. ``role``: sgd (no momentum
    buffer), sgd_momentum or adam."""

    __slots__ = ("table", "sizes", "has_grads", "refs")

    def __init__(self, items: Sequence[UpdateItem], role: str) -> None:
        self.table = (_Item * len(items))()
        self.sizes = [it.param.numel() for it in items]
        self.has_grads = all(it.grad is not None for it in items)
        self.refs: list[weakref.ref] = []
        for i, (it, n) in enumerate(zip(items, self.sizes)):
            self.table[i] = _item(it, n, role)

    def grad_pointers(self, grads: Optional[Sequence[torch.Tensor]]) -> Optional[ctypes.Array]:
        """None: the items' own gradients; else an array of ``grads``' pointers, checked."""
        if grads is None:
            if not self.has_grads:
                raise ValueError("an item's grad is missing (pass grads=)")
            return None
        if len(grads) != len(self.sizes):
            raise ValueError(f"{len(grads)} grads for {len(self.sizes)} items")
        return (_P * len(grads))(*[_ptr(g, n, "grad") for g, n in zip(grads, self.sizes)])


class _Packer:
    """``_Packed`` arrays by the identity of their items, dropped when any of the items dies.

    A key is the role and the items' ids. Every item gets a weak reference whose callback
    drops the entry as the item is freed, before its id can be reused, so a hit needs no
    check at all: a dictionary lookup, in C. An entry holds no tensor alive (only raw
    pointers, valid while its items live); the oldest entries go beyond ``size``."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self.entries: dict[tuple, _Packed] = {}

    def get(self, items: Sequence[UpdateItem], role: str) -> _Packed:
        key = (role, *map(id, items))
        packed = self.entries.get(key)
        if packed is not None:
            return packed
        packed = _Packed(items, role)
        while len(self.entries) >= self.size:
            self.entries.pop(next(iter(self.entries)))
        drop = functools.partial(self._drop, key)
        packed.refs = [weakref.ref(it, drop) for it in items]
        self.entries[key] = packed
        return packed

    def _drop(self, key: tuple, _dead: weakref.ref) -> None:
        self.entries.pop(key, None)


def _item(it: UpdateItem, n: int, role: str) -> _Item:
    if role == "adam":
        states = (_ptr(it.exp_avg, n, "exp_avg"), _ptr(it.exp_avg_sq, n, "exp_avg_sq"))
    elif role == "sgd_momentum":
        if it.momentum_buffer is None:
            raise ValueError("momentum != 0 needs a momentum_buffer")
        states = (_ptr(it.momentum_buffer, n, "momentum_buffer"), None)
    else:
        states = (None, None)
    lam, curvature, offset = (0.0, None, None) if it.pull is None else it.pull
    scale, scale_kind = _scale(it.scale, n)
    spans, n_spans = _spans(it.spans)
    return _Item(_ptr(it.param, n, "param"), None if it.grad is None else _ptr(it.grad, n, "grad"),
                 *states, None if curvature is None else _ptr(curvature, n, "curvature"),
                 None if offset is None else _ptr(offset, n, "offset"),
                 scale, spans, n, n_spans, scale_kind, lam)


def _ptr(t: Optional[torch.Tensor], n: int, name: str, dtype: torch.dtype = torch.float32) -> int:
    """``t``'s data pointer, once it is known to be a contiguous CPU tensor of ``n`` elements
    (the C side trusts it)."""
    if t is None:
        raise ValueError(f"{name} is missing")
    if t.dtype != dtype or t.numel() != n or not t.is_contiguous() or not t.is_cpu:
        raise ValueError(f"{name} must be a contiguous CPU {dtype} tensor of {n} elements, not "
                         f"{t.dtype} {tuple(t.shape)} on {t.device} (contiguous: {t.is_contiguous()})")
    return t.data_ptr()


def _scale(scale: Optional[torch.Tensor], n: int) -> tuple[Optional[int], int]:
    if scale is None:
        return None, 0
    kind = _SCALE_KIND.get(scale.dtype)
    if kind is None:
        raise ValueError(f"scale must be uint8, bool or float32, not {scale.dtype}")
    return _ptr(scale, n, "scale", scale.dtype), kind


def _spans(spans: Optional[torch.Tensor]) -> tuple[Optional[int], int]:
    if spans is None:
        return None, -1  # "no spans": an empty spans tensor's pointer may be NULL too
    if spans.dim() != 2 or spans.shape[1] != 2:
        raise ValueError(f"spans must have shape (k, 2), not {tuple(spans.shape)}")
    k = spans.shape[0]
    return _ptr(spans, 2 * k, "spans", torch.int64), k
