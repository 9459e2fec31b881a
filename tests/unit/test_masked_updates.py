"""The masked-update facility on the plain engine: frozen entries (and their optimizer
state) never move, free entries follow torch's own optimizer on the same gradients, scaled
entries move by the scale times the dense step. tests/e2e/test_masked_updates_sharded.py
shows the same at ZeRO 0-3 on 1 and 2 DeepSpeed workers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lifelong.platform.config import OptimConfig
from lifelong.platform.engine import TorchEngine

OPTIMIZERS = {
    "sgd_momentum": (OptimConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=0.01),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01)),
    "adam": (OptimConfig(name="adam", lr=0.01, weight_decay=0.01),
             lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01)),
    "adamw": (OptimConfig(name="adamw", lr=0.01, weight_decay=0.1),
              lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
}
STEPS = 5


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))


def masks() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    rows = (torch.rand(30, generator=g) < 0.3).float()  # units: a row-sparse plan
    return {"0.weight": rows, "0.bias": rows,
            "2.weight": (torch.rand(5, 30, generator=g) < 0.5).float(),  # scattered elements
            "2.bias": torch.tensor(0.0)}  # the whole tensor


def gradients(eng_params: dict[str, nn.Parameter], step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return {n: torch.randn(p.shape, generator=g) for n, p in eng_params.items()}


def run(eng: TorchEngine, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        for name, grad in gradients(eng.named, step).items():
            eng.named[name].grad = grad.clone()
        eng.step()


def state_of(eng: TorchEngine) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {k: v.clone() for k, v in eng.optimizer.state[p].items() if v.dim()}
            for n, p in eng.named.items()}


@pytest.mark.parametrize("kernels", ["reference", "auto"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_frozen_entries_and_their_state_are_bit_identical(name, kernels):
    cfg, torch_optimizer = OPTIMIZERS[name]
    eng = TorchEngine(model(), cfg, kernels)
    run(eng, 2)  # non-zero momentum / moments to keep
    before = {n: p.detach().clone() for n, p in eng.named.items()}
    state_before = state_of(eng)
    for param, mask in masks().items():
        eng.update_mask(param, mask)
    run(eng, STEPS, start=2)
    state_after = state_of(eng)
    dense = TorchEngine(model(), cfg, kernels)  # the same run without masks, for the free entries
    run(dense, 2 + STEPS)
    for param in before:
        frozen = eng.rules.element_mask(param) == 0
        now = eng.named[param].detach()
        assert torch.equal(now[frozen], before[param][frozen]), param
        for key, value in state_after[param].items():
            assert torch.equal(value[frozen], state_before[param][key][frozen]), (param, key)
        free = ~frozen
        torch.testing.assert_close(now[free], dense.named[param].detach()[free], rtol=1e-6, atol=1e-7)
        assert not torch.equal(now[free], before[param][free]) or not free.any()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_free_entries_follow_torchs_own_optimizer(name):
    cfg, torch_optimizer = OPTIMIZERS[name]
    ours, theirs = TorchEngine(model(), cfg), model()
    optimizer = torch_optimizer(theirs.parameters())
    for step in range(STEPS):
        grads = gradients(ours.named, step)
        for n, p in theirs.named_parameters():
            p.grad = grads[n].clone()
        optimizer.step()
    run(ours, STEPS)
    for n, p in theirs.named_parameters():
        torch.testing.assert_close(ours.named[n].detach(), p.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_scaled_entry_moves_by_the_scale_times_the_dense_step(name):
    cfg, _ = OPTIMIZERS[name]
    eng, dense = TorchEngine(model(), cfg), TorchEngine(model(), cfg)
    run(eng, 2), run(dense, 2)
    before = eng.named["0.weight"].detach().clone()
    scale = torch.linspace(0.0, 1.0, 30)  # a soft scale per unit, one of them 0
    eng.update_mask("0.weight", scale)
    run(eng, 1, start=2), run(dense, 1, start=2)
    moved = eng.named["0.weight"].detach() - before
    dense_moved = dense.named["0.weight"].detach() - before
    torch.testing.assert_close(moved, scale[:, None] * dense_moved, rtol=1e-5, atol=1e-8)
    assert torch.equal(moved[0], torch.zeros(40))  # scale 0: exactly still


def test_bad_masks_are_refused_with_one_line():
    eng = TorchEngine(model(), OPTIMIZERS["adam"][0])
    with pytest.raises(ValueError, match=r"expected the parameter's \(30, 40\), its rows \(30,\) or \(\)"):
        eng.update_mask("0.weight", torch.ones(40))
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        eng.update_mask("0.weight", torch.full((30,), 1.5))
    with pytest.raises(KeyError, match="no trainable parameter named 'nope'"):
        eng.update_mask("nope", torch.ones(1))


def test_clearing_a_mask_restores_the_dense_step():
    cfg = OPTIMIZERS["sgd_momentum"][0]
    eng, dense = TorchEngine(model(), cfg), TorchEngine(model(), cfg)
    eng.update_mask("0.weight", torch.zeros(30))
    eng.update_mask("0.weight", None)
    run(eng, 2), run(dense, 2)
    assert torch.equal(eng.named["0.weight"], dense.named["0.weight"])


def test_the_readmes_freeze_example_freezes_and_scales_through_a_whole_run():
    """strategy_examples/freeze_strategy.py, by file path, on the plain engine over split
    digits: the frozen units' incoming weights, bias and momentum end as they started."""
    from pathlib import Path

    from lifelong.platform.learner import Learner
    from tests.conftest import make_config

    example = Path(__file__).resolve().parents[2] / "strategy_examples" / "freeze_strategy.py"
    cfg = make_config(stream={"dataset": "digits", "scenario": "split", "n_tasks": 2},
                      model={"hidden": [32]}, optim={"name": "sgd", "lr": 0.1, "momentum": 0.9},
                      strategy={"name": f"{example}:FreezeUnits", "fraction": 0.75, "scale": 0.5},
                      train={"epochs": 1, "batch_size": 32}, engine={"backend": "torch"})
    learner = Learner(cfg)
    start = {n: p.detach().clone() for n, p in learner.engine.named.items()}
    learner.run()
    rows = learner.engine.rules.masks["0.weight"]
    assert rows.tolist().count(0.0) == 24 and set(rows.tolist()) == {0.0, 0.5}
    frozen = rows == 0
    weight, bias = learner.engine.named["0.weight"].detach(), learner.engine.named["0.bias"].detach()
    assert torch.equal(weight[frozen], start["0.weight"][frozen])
    assert torch.equal(bias[frozen], start["0.bias"][frozen])
    assert not torch.equal(weight[~frozen], start["0.weight"][~frozen])
    momentum = learner.engine.optimizer.state[learner.engine.named["0.weight"]]["momentum_buffer"]
    assert torch.equal(momentum[frozen], torch.zeros_like(momentum[frozen]))
