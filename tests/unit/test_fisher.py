"""The closed-form per-row Fisher sums (lifelong/strategies/fisher.py) equal torch.func's
vmap(grad) on real digits rows: MLPs (relu, tanh), masked task-setting logits, conv stacks,
and models whose parameters the closed forms do not cover (they take the exact fallback).
float64 comparisons are tight (rtol 1e-10); float32 ones, through EWC, allow 1e-4."""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from lifelong.platform.config import ModelConfig
from lifelong.platform.learner import Learner
from lifelong.platform.model import build_model, mask_logits
from lifelong.strategies import fisher
from lifelong.strategies.ewc import EWC
from lifelong.strategies.fisher import squared_row_grad_sums
from lifelong.streams.batches import Batch, Featurizer, Samples
from lifelong.streams.registry import build_stream
from tests.conftest import make_config

STREAM = {"dataset": "digits", "scenario": "split", "n_tasks": 3, "classes_per_task": 2,
          "setting": "task", "train_samples_per_task": 96, "test_samples_per_task": 32}


@pytest.fixture(scope="module")
def stream():
    return build_stream(make_config(stream=STREAM).stream, seed=0)


@pytest.fixture(scope="module")
def rows(stream) -> Batch:
    """Real digits rows of every task (so the task masks differ between rows), float64."""
    data = Samples.cat([Samples.of(task) for task in stream.tasks])
    batch = Featurizer(stream)(data)
    return Batch(batch.x.double(), batch.y, batch.task)


def losses_of(model: nn.Module, masks: Optional[torch.Tensor]):  # type: ignore[no-untyped-def]
    def row_losses(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(mask_logits(functional_call(model, p, (x,)), t, masks), y,
                               reduction="none")
    return row_losses


def oracle(row_losses: Any, params: dict[str, torch.Tensor], *batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """A gradient per row with torch.func, squared and summed."""
    def one(p: dict[str, torch.Tensor], *row: torch.Tensor) -> torch.Tensor:
        return row_losses(p, *(r[None] for r in row)).sum()
    per_row = vmap(grad(one), in_dims=(None,) + (0,) * len(batch))(params, *batch)
    return {k: g.square().sum(0) for k, g in per_row.items()}


def random_params(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Trained-looking (not at-init) float64 weights, so every layer's sums are nonzero."""
    torch.manual_seed(seed)
    return {k: (v.detach().double() + 0.2 * torch.randn_like(v.double())) for k, v in model.named_parameters()}


def assert_matches_oracle(model: nn.Module, params: dict[str, torch.Tensor], masks: Optional[torch.Tensor],
                          rows: Batch) -> None:
    row_losses = losses_of(model, masks)
    got = squared_row_grad_sums(row_losses, params, rows.x, rows.y, rows.task)
    expected = oracle(row_losses, params, rows.x, rows.y, rows.task)
    assert set(got) == set(params)
    for name in params:
        assert got[name].shape == params[name].shape
        assert float(expected[name].abs().sum()) > 0, name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("model", [{"hidden": [32, 16], "activation": "relu"},
                                   {"hidden": [32, 16], "activation": "tanh"},
                                   {"hidden": [16], "conv": [4], "activation": "relu"},
                                   {"hidden": [16], "conv": [4, 8], "activation": "tanh"}],
                         ids=["mlp-relu", "mlp-tanh", "conv4", "conv4-8-tanh"])
@pytest.mark.parametrize("masked", [True, False], ids=["task-setting", "plain-logits"])
def test_closed_form_equals_per_row_gradients(model, masked, stream, rows, monkeypatch):
    net = build_model(ModelConfig(**model), stream.input_dim, stream.n_outputs).double()
    # Every parameter of build_model's models is covered: the per-row fallback never runs.
    monkeypatch.setattr(fisher, "_per_row_fallback", lambda *a: pytest.fail("fell back"))
    assert_matches_oracle(net, random_params(net, 0), stream.output_masks() if masked else None, rows)


class Gate(nn.Module):
    """A module type the closed forms do not know (as a strategy's wrap_model might add)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.scale)


class Uncovered(nn.Module):
    """Layers the closed forms leave to the fallback -- a circular-padded and a grouped conv,
    a Linear called twice (shared weights), a gate -- around covered Linear layers."""

    def __init__(self, side: int, n_outputs: int) -> None:
        super().__init__()
        self.side = side
        self.circular = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
        self.grouped = nn.Conv2d(2, 2, 3, padding=1, groups=2)
        self.inp = nn.Linear(2 * side * side, 16)
        self.gate = Gate(16)
        self.twice = nn.Linear(16, 16)
        self.out = nn.Linear(16, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.grouped(torch.tanh(self.circular(x.view(-1, 1, self.side, self.side)))))
        h = torch.tanh(self.gate(self.inp(h.flatten(1))))
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        return self.out(h)


def test_parameters_the_closed_forms_do_not_cover_fall_back_exactly(stream, rows, monkeypatch):
    net = Uncovered(8, stream.n_outputs).double()
    params = random_params(net, 1)
    fell_back: list[str] = []
    original = fisher._per_row_fallback

    def recording(row_losses, params, names, batch):  # type: ignore[no-untyped-def]
        fell_back.extend(names)
        return original(row_losses, params, names, batch)

    monkeypatch.setattr(fisher, "_per_row_fallback", recording)
    row_losses = losses_of(net, stream.output_masks())
    got = squared_row_grad_sums(row_losses, params, rows.x, rows.y, rows.task)
    expected = oracle(row_losses, params, rows.x, rows.y, rows.task)
    assert sorted(fell_back) == ["circular.bias", "circular.weight", "gate.scale", "grouped.bias",
                                 "grouped.weight", "twice.bias", "twice.weight"]
    for name in params:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-14)


def test_unused_layer_outputs_give_zero(stream, rows):
    net = nn.ModuleDict({"used": nn.Linear(stream.input_dim, stream.n_outputs),
                         "unused": nn.Linear(stream.input_dim, 3)}).double()

    def row_losses(p, x, y, t):  # type: ignore[no-untyped-def]
        functional_call(net["unused"], {k[7:]: v for k, v in p.items() if k.startswith("unused.")}, (x,))
        logits = functional_call(net["used"], {k[5:]: v for k, v in p.items() if k.startswith("used.")}, (x,))
        return F.cross_entropy(logits, y, reduction="none")

    params = random_params(net, 2)
    got = squared_row_grad_sums(row_losses, params, rows.x, rows.y, rows.task)
    assert float(got["unused.weight"].abs().sum()) == 0 and float(got["used.weight"].sum()) > 0


# -- through EWC, float32, on the learner's meta-device skeleton ----------------------------------------

def learner(model: dict, strategy: dict, stream) -> Learner:  # type: ignore[no-untyped-def]
    cfg = make_config(stream=STREAM, model=model, strategy={"name": "ewc", **strategy},
                      optim={"name": "sgd", "lr": 0.1}, train={"epochs": 1, "batch_size": 16},
                      engine={"backend": "torch"}, seed=0)
    return Learner(cfg, stream=stream)


def vmap_fisher(ewc: EWC, data: Samples) -> dict[str, torch.Tensor]:
    """EWC's Fisher as it was computed before the closed forms: vmap(grad) over all rows."""
    params = {k: v.detach() for k, v in ewc.ctx.full_params().items()}

    def row_losses(p, x, y, t):  # type: ignore[no-untyped-def]
        return F.cross_entropy(ewc.ctx.logits_fn(p, x, t), y, reduction="none")

    batch = next(iter(ewc.ctx.batches(data, len(data))))
    return {k: v / len(data) for k, v in oracle(row_losses, params, batch.x, batch.y, batch.task).items()}


@pytest.mark.parametrize("model", [{"hidden": [32, 16]}, {"hidden": [16], "conv": [4, 8]}],
                         ids=["mlp", "conv"])
def test_ewc_fisher_defaults_to_every_row_and_matches_per_row_gradients(model, stream):
    ewc_learner = learner(model, {"fisher_batch_size": 40}, stream)  # batches of 40, 40, 16
    ewc: EWC = ewc_learner.strategy  # type: ignore[assignment]
    assert ewc.config.fisher_samples is None
    perturbed = random_params(ewc_learner.engine.module, 3)
    with ewc_learner.ctx.gathered() as live:
        for name, value in live.items():
            value.copy_(perturbed[name])
    task = stream.tasks[1]
    got = ewc.estimate_fisher(task, Samples.of(task))
    expected = vmap_fisher(ewc, Samples.of(task))
    for name, value in expected.items():
        assert float(value.sum()) > 0
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-9)


def test_a_tiny_ewc_run_gives_the_accuracy_matrix_of_per_row_gradients(stream, monkeypatch):
    """The whole strategy, on the plain engine: the closed forms change no prediction
    (beyond float32 rounding: at most one flipped test row of 32 per entry). lam stays where
    SGD is stable on the penalty (lr * lam * F < 2): past that, rounding grows chaotically."""
    cfg = {"hidden": [32, 16]}, {"lam": 100.0}
    closed_form = learner(*cfg, stream).run().R
    monkeypatch.setattr(EWC, "estimate_fisher", lambda self, task, data: vmap_fisher(self, data))
    per_row = learner(*cfg, stream).run().R
    assert closed_form != learner({"hidden": [32, 16]}, {"lam": 0.0}, stream).run().R  # EWC acts
    diff = max(abs(a - b) for ra, rb in zip(closed_form, per_row) for a, b in zip(ra, rb))
    assert diff <= 1 / 32, (closed_form, per_row)
