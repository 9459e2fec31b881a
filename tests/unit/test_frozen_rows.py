"""A Linear layer with frozen rows computes its weight gradient for the active rows only;
everything else (forward, input gradient, bias gradient, active rows' weight gradient)
equals ordinary autograd, and the optimizer step is the same either way."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lifelong.platform import frozen_rows
from lifelong.platform.config import OptimConfig
from lifelong.platform.engine import TorchEngine

ROWS = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 1.0])


def model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(9, 6), nn.ReLU(), nn.Linear(6, 3))


def grads(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    m.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    F.cross_entropy(m(x).reshape(-1, 3), y).backward()
    return {"x": x.grad, **{n: p.grad.clone() for n, p in m.named_parameters()}}


def test_active_rows_get_autograds_gradient_and_frozen_rows_zero():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 2, 9, generator=g), torch.randint(0, 3, (8,), generator=g)  # 3-D input too
    plain, skipping = model(), model()
    frozen_rows.sync(skipping, "0.weight", ROWS)
    assert "forward" in vars(skipping[0])
    assert torch.equal(skipping(x), plain(x))
    expected, got = grads(plain, x, y), grads(skipping, x, y)
    active = ROWS != 0
    torch.testing.assert_close(got["0.weight"][active], expected["0.weight"][active])
    assert torch.equal(got["0.weight"][~active], torch.zeros(3, 9))
    assert expected["0.weight"][~active].abs().sum() > 0  # there was something to skip
    for name in ("x", "0.bias", "2.weight", "2.bias"):
        torch.testing.assert_close(got[name], expected[name])


def test_clearing_the_mask_restores_the_ordinary_layer():
    m = model()
    frozen_rows.sync(m, "0.weight", ROWS)
    frozen_rows.sync(m, "0.weight", None)
    assert "forward" not in vars(m[0]) and not hasattr(m[0], "lifelong_active_rows")
    frozen_rows.sync(m, "0.weight", torch.ones(6))  # nothing frozen: nothing to skip
    frozen_rows.sync(m, "0.bias", torch.zeros(6))  # not a weight
    frozen_rows.sync(m, "2.weight", torch.zeros(3, 6))  # an element mask
    assert all("forward" not in vars(layer) for layer in m)


def test_the_engine_steps_the_same_with_and_without_the_skipping():
    cfg = OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    a, b = TorchEngine(model(), cfg), TorchEngine(model(), cfg)
    a.update_mask("0.weight", ROWS)
    b.rules.set_mask("0.weight", ROWS)  # the same rules, ordinary backward
    assert "forward" in vars(a.module[0]) and "forward" not in vars(b.module[0])
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(8, 9, generator=g), torch.randint(0, 3, (8,), generator=g)
        for eng in (a, b):
            eng.backward(F.cross_entropy(eng(x), y))
            eng.step()
    for name, p in a.named.items():
        torch.testing.assert_close(p, b.named[name], rtol=1e-6, atol=1e-7)
