"""FusedOptimizer's calls into the kernels: one multi-tensor call per param group and step,
no call at all for a tensor its plan freezes, and per-tensor calls when Adam's step counts
differ within a group (a tensor that got its first gradient late)."""

from __future__ import annotations

import copy

import torch

from lifelong.kernels import REFERENCE, Kernels
from lifelong.platform.config import OptimConfig
from lifelong.platform.optimizer import FusedOptimizer
from lifelong.platform.update_rules import UpdatePlan

FROZEN = UpdatePlan(spans=torch.zeros((0, 2), dtype=torch.int64))


def recording(calls: list[tuple[str, list[int], int]]) -> Kernels:
    """The reference, recording (kind, the items' sizes, Adam's step) per many-call."""
    def refuse(*args, **kwargs):
        raise AssertionError("the optimizer must use the many-calls")

    def sgd_many(items, **hyper):
        calls.append(("sgd", [it.param.numel() for it in items], 0))
        REFERENCE.sgd_update_many(items, **hyper)

    def adam_many(items, *, step, **hyper):
        calls.append(("adam", [it.param.numel() for it in items], step))
        REFERENCE.adam_update_many(items, step=step, **hyper)

    return Kernels("recording", refuse, refuse, sgd_many, adam_many)


def params(*sizes: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(sum(sizes))
    return [torch.nn.Parameter(torch.randn(size, 3, generator=g)) for size in sizes]


def set_grads(ps: list[torch.nn.Parameter], step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)


def test_one_call_per_group_and_step() -> None:
    first, second = params(2, 3, 4), params(5, 6)
    calls = []
    opt = FusedOptimizer([{"params": first}, {"params": second, "lr": 0.5}],
                         OptimConfig(name="sgd", lr=0.1, momentum=0.9), recording(calls))
    for step in range(2):
        set_grads(first + second, step)
        opt.step()
    assert calls == [("sgd", [6, 9, 12], 0), ("sgd", [15, 18], 0)] * 2


def test_a_frozen_tensor_is_not_passed_and_keeps_its_bits() -> None:
    ps = params(2, 3, 4)
    calls = []
    opt = FusedOptimizer(ps, OptimConfig(name="adamw", lr=0.1, weight_decay=0.1), recording(calls))
    set_grads(ps, 0)
    before = ps[1].detach().clone()
    opt.plans = lambda: {id(ps[1]): FROZEN}
    opt.step()
    assert calls == [("adam", [6, 12], 1)]
    assert torch.equal(ps[1].detach(), before)
    assert int(opt.state[ps[1]]["step"]) == 1  # counted as torch counts it, frozen or not
    assert not opt.state[ps[1]]["exp_avg"].any()


def test_adam_steps_that_differ_get_a_call_each() -> None:
    ps, twins = params(2, 3), params(2, 3)
    calls = []
    opt = FusedOptimizer(ps, OptimConfig(name="adam", lr=0.1), recording(calls))
    torch_opt = torch.optim.Adam(twins, lr=0.1)
    for step in range(3):
        for group in (ps, twins):
            set_grads(group, step)
            if step == 0:
                group[1].grad = None  # its first gradient comes a step later
        opt.step()
        torch_opt.step()
    assert calls == [("adam", [6], 1), ("adam", [6], 2), ("adam", [9], 1),
                     ("adam", [6], 3), ("adam", [9], 2)]
    for ours, theirs in zip(ps, twins):
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-6, atol=1e-7)


def test_items_stay_while_only_the_gradients_change() -> None:
    ps = params(2, 3)
    seen = []
    kernels = Kernels("recording", None, None, lambda items, **hyper: seen.append(list(items)), None)
    opt = FusedOptimizer(ps, OptimConfig(name="sgd", lr=0.1, momentum=0.9), kernels)
    for step in range(2):
        set_grads(ps, step)  # new gradient tensors, as after zero_grad(set_to_none=True)
        opt.step()
    assert all(a is b for a, b in zip(*seen))
    opt.plans = lambda: {id(ps[0]): UpdatePlan(scale=torch.ones(6, dtype=torch.uint8))}
    opt.step()
    assert seen[2][0] is not seen[1][0] and seen[2][0].scale is not None and seen[2][1] is seen[1][1]


def test_a_loaded_state_and_a_swapped_parameter_storage_are_followed() -> None:
    """The optimizer keeps views of parameters and state between steps: after
    load_state_dict (new state tensors) or ``param.data = ...`` it must use the new ones."""
    ps, twins = params(2, 3), params(2, 3)
    cfg = OptimConfig(name="adamw", lr=0.1, weight_decay=0.1)
    opt, twin_opt = FusedOptimizer(ps, cfg, REFERENCE), torch.optim.AdamW(twins, lr=0.1, weight_decay=0.1)
    for step in range(5):
        if step == 2:
            opt.load_state_dict(copy.deepcopy(twin_opt.state_dict()))  # equal values, new tensors
        if step == 3:
            for ours, theirs in zip(ps, twins):
                ours.data = theirs.detach().clone()  # new storage
        for group in (ps, twins):
            set_grads(group, step)
        opt.step()
        twin_opt.step()
    for ours, theirs in zip(ps, twins):
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.state[ours]["exp_avg"], twin_opt.state[theirs]["exp_avg"])
