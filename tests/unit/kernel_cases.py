"""Update cases shared by the C kernel tests and the Triton interpreter worker: each runs
a few steps of one implementation beside ``reference.py`` on the same inputs and checks
that frozen elements keep their exact bits and the rest match the reference. ``ManyCase``
does the same for a multi-tensor call against one reference call per tensor."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from lifelong.kernels import reference
from lifelong.kernels.reference import UpdateItem

STEPS = 3
RTOL, ATOL = 1e-6, 1e-7
OPTIMIZERS = {
    # name: (kind, hyper-parameters)
    "sgd_momentum": ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2}),
    "sgd_plain": ("sgd", {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}),
    "adam": ("adam", {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                      "weight_decay": 1e-2, "decoupled": False}),
    "adam_no_decay": ("adam", {"lr": 1e-2, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
                               "weight_decay": 0.0, "decoupled": False}),
    "adamw": ("adam", {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                       "weight_decay": 1e-1, "decoupled": True}),
}
SCALES = ("none", "uint8", "float")
SPANS = ("none", "rows", "elements", "empty")


@dataclass(frozen=True)
class Case:
    optimizer: str
    scale: str
    spans: str
    pull: bool
    rows: int
    cols: int
    seed: int = 0
    # The reference gets the spans as a uint8 mask instead (the same update; scale must be
    # "none"): both forms of a row-sparse update must agree.
    spans_as_mask: bool = False

    @property
    def id(self) -> str:
        return (f"{self.optimizer}-{self.scale}_scale-{self.spans}_spans-"
                f"{'pull' if self.pull else 'no_pull'}-{self.rows}x{self.cols}")


def cases(shapes: list[tuple[int, int]], optimizers=tuple(OPTIMIZERS), scales=SCALES,
          spans=SPANS, pulls=(False, True)) -> list[Case]:
    """Every combination, each on every shape; seeds differ per case."""
    combos = itertools.product(optimizers, scales, spans, pulls, shapes)
    return [Case(o, s, sp, p, r, c, seed=i) for i, (o, s, sp, p, (r, c)) in enumerate(combos)]


# Few and small: the interpreter is slow, a program per chunk (per element, for single-
# element spans). Rows of 1100 span two 1024-element blocks; rows of 1056 (a multiple of
# 16) take the kernels' aligned path.
TRITON_CASES = (cases([(3, 1100)], spans=("none", "rows", "empty"), pulls=(True,))
                + cases([(3, 1056)], spans=("rows",), pulls=(True,))
                + cases([(2, 7)], scales=("uint8", "float"), pulls=(False,)))


@dataclass(frozen=True)
class ManyCase:
    """One multi-tensor call per step over tensors of mixed sizes; tensor ``i`` gets scale
    ``SCALES[i % 3]``, spans ``SPANS[i // 3 % 4]`` and a pull when ``i`` is odd, so twelve
    tensors cover every combination."""

    optimizer: str
    shapes: tuple[tuple[int, int], ...]
    seed: int = 0
    grads_apart: bool = False  # items without gradients; each call passes them, 2-D

    @property
    def id(self) -> str:
        return (f"many-{self.optimizer}-{len(self.shapes)}_tensors-{sum(r * c for r, c in self.shapes)}"
                + ("-grads_apart" if self.grads_apart else ""))


MANY_SHAPES = ((1, 1), (3, 5), (16, 65), (300, 1031), (7, 1031), (64, 64)) * 2
TRITON_MANY_CASES = tuple(ManyCase(o, ((1, 1), (3, 5), (2, 7), (3, 1056)) * 3, seed=i, grads_apart=i == 1)
                          for i, o in enumerate(("sgd_momentum", "adamw")))


def check_many(case: ManyCase, sgd_update_many: Callable[..., None],
               adam_update_many: Callable[..., None]) -> None:
    """``STEPS`` many-calls against ``reference.sgd_update``/``adam_update`` per tensor. The
    items are built once and reused, as a caller with fixed tensors would: with their own
    gradients (new values copied in), or without, new gradients passed each call
    (``grads_apart``); raises AssertionError as ``check`` does."""
    g = torch.Generator().manual_seed(case.seed)
    kind, hyper = OPTIMIZERS[case.optimizer]
    ours, theirs, initials, frozens, extras, grads = [], [], [], [], [], []
    for i, (rows, cols) in enumerate(case.shapes):
        n = rows * cols
        initial = _initial_state(kind, hyper, n, g)
        scale = _scale(SCALES[i % 3], n, g)
        spans = _spans(SPANS[i // 3 % 4], rows, cols, g)
        pull = (0.5, torch.rand(n, generator=g), torch.randn(n, generator=g)) if i % 2 else None
        ours.append({k: v.clone() for k, v in initial.items()})
        theirs.append({k: v.clone() for k, v in initial.items()})
        initials.append(initial)
        frozens.append(_frozen(scale, spans, n))
        extras.append({"scale": scale, "spans": spans, "pull": pull})
        grads.append(torch.empty(rows, cols))
    items = [UpdateItem(state["param"], None if case.grads_apart else grad.view(-1),
                        momentum_buffer=state.get("momentum_buffer"), exp_avg=state.get("exp_avg"),
                        exp_avg_sq=state.get("exp_avg_sq"), **extra)
             for state, grad, extra in zip(ours, grads, extras)]
    for step in range(1, STEPS + 1):
        if case.grads_apart:
            grads = [torch.randn(grad.shape, generator=g) for grad in grads]
            apart = {"grads": grads}
        else:
            for grad in grads:
                grad.copy_(torch.randn(grad.shape, generator=g))
            apart = {}
        if kind == "sgd":
            sgd_update_many(items, **hyper, **apart)
            for state, grad, extra in zip(theirs, grads, extras):
                reference.sgd_update(state["param"], grad.view(-1), state.get("momentum_buffer"),
                                     **hyper, **extra)
        else:
            adam_update_many(items, step=step, **hyper, **apart)
            for state, grad, extra in zip(theirs, grads, extras):
                reference.adam_update(state["param"], grad.view(-1), state["exp_avg"],
                                      state["exp_avg_sq"], step=step, **hyper, **extra)
    for i, (initial, frozen) in enumerate(zip(initials, frozens)):
        for name, start in initial.items():
            got, want = ours[i][name], theirs[i][name]
            changed = (got.view(torch.int32) != start.view(torch.int32)) & frozen
            assert not changed.any(), f"tensor {i} {name}: {int(changed.sum())} frozen elements changed"
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL,
                                       msg=lambda m: f"tensor {i} {name}: {m}")


def check(case: Case, sgd_update: Callable[..., None], adam_update: Callable[..., None]) -> None:
    """Runs ``STEPS`` steps of the implementation and of the reference; raises
    AssertionError on any difference beyond the tolerance or any change to a frozen bit."""
    g = torch.Generator().manual_seed(case.seed)
    n = case.rows * case.cols
    kind, hyper = OPTIMIZERS[case.optimizer]
    initial = _initial_state(kind, hyper, n, g)
    scale = _scale(case.scale, n, g)
    spans = _spans(case.spans, case.rows, case.cols, g)
    pull = (0.5, torch.rand(n, generator=g), torch.randn(n, generator=g)) if case.pull else None
    grads = [torch.randn(n, generator=g) for _ in range(STEPS)]
    frozen = _frozen(scale, spans, n)
    ref_extra = {"scale": scale, "spans": spans, "pull": pull}
    if case.spans_as_mask:
        assert scale is None, "spans_as_mask replaces the scale"
        ref_extra.update(scale=(~frozen).to(torch.uint8), spans=None)
    ours = {k: v.clone() for k, v in initial.items()}
    theirs = {k: v.clone() for k, v in initial.items()}
    extra = {"scale": scale, "spans": spans, "pull": pull}
    for step, grad in enumerate(grads, start=1):
        if kind == "sgd":
            for impl, state, kw in ((sgd_update, ours, extra), (reference.sgd_update, theirs, ref_extra)):
                impl(state["param"], grad, state.get("momentum_buffer"), **hyper, **kw)
        else:
            for impl, state, kw in ((adam_update, ours, extra), (reference.adam_update, theirs, ref_extra)):
                impl(state["param"], grad, state["exp_avg"], state["exp_avg_sq"], step=step,
                     **hyper, **kw)
    for name, start in initial.items():
        got, want = ours[name], theirs[name]
        changed = (got.view(torch.int32) != start.view(torch.int32)) & frozen
        assert not changed.any(), f"{name}: {int(changed.sum())} frozen elements changed"
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


def _initial_state(kind: str, hyper: dict, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"param": torch.randn(n, generator=g)}
    if kind == "sgd" and hyper["momentum"]:
        state["momentum_buffer"] = torch.randn(n, generator=g)
    if kind == "adam":
        state["exp_avg"] = 0.1 * torch.randn(n, generator=g)
        state["exp_avg_sq"] = 0.01 * torch.rand(n, generator=g)
    return state


def _scale(kind: str, n: int, g: torch.Generator) -> Optional[torch.Tensor]:
    if kind == "none":
        return None
    if kind == "uint8":
        return (torch.rand(n, generator=g) < 0.6).to(torch.uint8)
    soft = torch.rand(n, generator=g)
    soft[torch.rand(n, generator=g) < 0.3] = 0.0
    soft[torch.rand(n, generator=g) < 0.1] = 1.0
    return soft


def _spans(kind: str, rows: int, cols: int, g: torch.Generator) -> Optional[torch.Tensor]:
    """``rows``: a random subset of the rows of a (rows, cols) weight, adjacent ones left
    as touching spans, with a zero-length span before every third; ``elements``:
    single-element spans."""
    if kind == "none":
        return None
    if kind == "empty":
        return torch.zeros((0, 2), dtype=torch.int64)
    if kind == "rows":
        picked = torch.nonzero(torch.rand(rows, generator=g) < 0.4).flatten()
        spans = torch.stack([picked * cols, (picked + 1) * cols], dim=1)
        empty = spans[::3].clone()  # zero-length spans, as an empty row's would be
        empty[:, 1] = empty[:, 0]
        both = torch.cat([empty, spans])
        return both[torch.argsort(2 * both[:, 0] + (both[:, 1] > both[:, 0]))].contiguous()
    picked = torch.nonzero(torch.rand(rows * cols, generator=g) < 0.3).flatten()
    return torch.stack([picked, picked + 1], dim=1).contiguous()


def _frozen(scale: Optional[torch.Tensor], spans: Optional[torch.Tensor], n: int) -> torch.Tensor:
    frozen = torch.zeros(n, dtype=torch.bool) if scale is None else scale == 0
    if spans is not None:
        edges = torch.zeros(n + 1, dtype=torch.int64)
        edges.index_add_(0, spans[:, 0], torch.ones(len(spans), dtype=torch.int64))
        edges.index_add_(0, spans[:, 1], -torch.ones(len(spans), dtype=torch.int64))
        frozen |= torch.cumsum(edges, 0)[:n] == 0
    return frozen
