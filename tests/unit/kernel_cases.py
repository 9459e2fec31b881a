"""Update cases shared by the C kernel tests and the Triton interpreter worker: each runs
a few steps of one implementation beside ``reference.py`` on the same inputs and checks
that frozen elements keep their exact bits and the rest match the reference."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from lifelong.kernels import reference

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
    # "none"): its loop over spans is slow for many single-element spans.
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
# element spans). Rows of 1100 span two 1024-element blocks.
TRITON_CASES = (cases([(3, 1100)], spans=("none", "rows", "empty"), pulls=(True,))
                + cases([(2, 7)], scales=("uint8", "float"), pulls=(False,)))


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
