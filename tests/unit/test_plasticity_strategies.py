"""Continual backprop and the plasticity baselines (ReDo, L2, shrink and perturb) at small
scale, on real data through the plain learner: what they replace, when, and what they
leave behind in the weights and the optimizer state."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lifelong.platform.errors import ConfigError
from lifelong.platform.learner import Learner
from lifelong.strategies.cbp import ContinualBackprop
from lifelong.strategies.redo import ReDo, dormant_units
from lifelong.strategies.units import hidden_layers, outgoing_magnitude
from lifelong.streams.batches import Samples, epoch_seed, train_batches
from lifelong.streams.registry import build_stream
from tests.conftest import make_config

STREAM = {"dataset": "digits", "scenario": "permuted", "n_tasks": 2, "setting": "domain",
          "train_samples_per_task": 320, "test_samples_per_task": 64}


def config(strategy: dict, optim: str = "adam", **model: Any) -> Any:
    return make_config(stream=STREAM, model={"hidden": [16], **model}, strategy=strategy,
                       optim={"name": optim, "lr": 0.01 if optim == "adam" else 0.05},
                       train={"epochs": 1, "batch_size": 16, "eval_batch_size": 64},
                       engine={"backend": "torch"}, seed=0)


@pytest.fixture(scope="module")
def stream():
    return build_stream(config({"name": "naive"}).stream, seed=0)


def batches(learner: Learner, task: int = 0) -> list:
    return list(train_batches(Samples.of(learner.feed.server.stream.tasks[task]), learner.featurize,
                              16, epoch_seed(0, task, 0)))


def kill_unit(learner: Learner, unit: int) -> None:
    """Unit ``unit`` of the first hidden layer never fires (and, under ReLU, never learns)."""
    with learner.ctx.gathered() as params:
        params["0.weight"][unit] = 0.0
        params["0.bias"][unit] = -1.0


def test_cbp_replaces_units_and_resets_their_adam_state(stream):
    learner = Learner(config({"name": "cbp", "replacement_rate": 0.05, "maturity_threshold": 5}),
                      stream=stream)
    cbp: ContinualBackprop = learner.strategy  # type: ignore[assignment]
    layer = hidden_layers(learner.engine.module)[0]
    state = learner.engine.optimizer.state
    w_in, w_out = learner.engine.named["0.weight"], learner.engine.named["2.weight"]
    checked = 0
    for batch in batches(learner):
        before = cbp.replaced["hidden0"]
        learner.train_step(batch)
        new = cbp.replaced["hidden0"] - before
        if new == 0:
            continue
        units = cbp.age["hidden0"] == 0  # just replaced
        assert int(units.sum()) == new
        for param, rows in ((w_in, units), (learner.engine.named["0.bias"], units)):
            for key in ("exp_avg", "exp_avg_sq"):
                assert float(state[param][key][rows].abs().sum()) == 0.0
                assert float(state[param][key][~rows].abs().sum()) > 0.0
        for key in ("exp_avg", "exp_avg_sq"):
            assert float(state[w_out][key][:, units].abs().sum()) == 0.0
            assert float(state[w_out][key][:, ~units].abs().sum()) > 0.0
        assert float(outgoing_magnitude(layer, w_out.detach())[units].sum()) == 0.0
        assert float(w_in.detach()[units].abs().max()) <= layer.fan_in ** -0.5
        assert float(cbp.utility["hidden0"][units].abs().sum()) == 0.0
        checked += 1
    assert checked >= 3  # 20 steps, 16 units: up to 0.8 replacements a step once mature


def test_cbp_replaces_the_lowest_utility_unit_first(stream):
    learner = Learner(config({"name": "cbp", "replacement_rate": 1 / 16, "maturity_threshold": 8},
                             optim="sgd"), stream=stream)
    kill_unit(learner, unit=11)
    cbp: ContinualBackprop = learner.strategy  # type: ignore[assignment]
    for step, batch in enumerate(batches(learner)[:9], start=1):
        learner.train_step(batch)
        assert cbp.replaced["hidden0"] == (1 if step == 9 else 0)  # 16 eligible x 1/16 at step 9
    assert cbp.age["hidden0"][11] == 0 and bool((cbp.age["hidden0"][torch.arange(16) != 11] == 9).all())
    assert float(learner.engine.named["0.bias"].detach()[11]) == 0.0  # reborn


def test_cbp_counts_fractional_replacements_across_steps(stream):
    learner = Learner(config({"name": "cbp", "replacement_rate": 0.25 / 16, "maturity_threshold": 0}),
                      stream=stream)
    for batch in batches(learner)[:10]:
        learner.train_step(batch)
    assert learner.strategy.replaced == {"hidden0": 2}  # 10 x 0.25 = 2.5


def test_cbp_works_on_a_conv_stack_and_logs_its_replacements(stream):
    learner = Learner(config({"name": "cbp", "replacement_rate": 0.05, "maturity_threshold": 5},
                             conv=[4, 4]), stream=stream)
    logged: dict = {}
    for batch in batches(learner):
        logged = learner.train_step(batch)
    replaced = learner.strategy.replaced
    assert set(replaced) == {"hidden0", "hidden1", "hidden2"} and min(replaced.values()) >= 1
    assert float(logged["cbp/replaced/hidden2"]) == replaced["hidden2"]


def test_redo_recycles_dormant_units_every_k_steps(stream):
    learner = Learner(config({"name": "redo", "every": 6, "tau": 0.0}, optim="sgd"), stream=stream)
    kill_unit(learner, unit=3)
    redo: ReDo = learner.strategy  # type: ignore[assignment]
    for step, batch in enumerate(batches(learner)[:6], start=1):
        learner.train_step(batch)
        assert (redo.recycled["hidden0"] >= 1) == (step == 6)  # the killed unit, maybe others
    assert float(learner.engine.named["0.weight"].detach()[3].abs().sum()) > 0.0  # fresh incoming weights
    assert float(learner.engine.named["2.weight"].detach()[:, 3].abs().sum()) == 0.0


def test_dormant_units_follow_sokars_score():
    mean_abs = torch.tensor([1.0, 0.05, 0.0, 2.95])  # layer mean 1.0
    assert dormant_units(mean_abs, 0.05).tolist() == [False, True, True, False]
    assert dormant_units(mean_abs, 0.0).tolist() == [False, False, True, False]
    assert dormant_units(torch.zeros(3), 0.1).all()


def test_l2_adds_lam_theta_to_the_gradient(stream):
    learner = Learner(config({"name": "l2", "lam": 0.5}), stream=stream)
    batch = batches(learner)[0]
    loss = torch.nn.functional.cross_entropy(learner.engine(batch.x), batch.y)
    learner.engine.backward(loss)
    plain = {n: p.grad.clone() for n, p in learner.engine.named.items()}
    learner.strategy.transform_grads()
    for name, param in learner.engine.named.items():
        torch.testing.assert_close(param.grad, plain[name] + 0.5 * param.detach())


def test_shrink_perturb_shrinks_and_adds_seeded_noise(stream):
    learner = Learner(config({"name": "shrink_perturb", "shrink": 0.1, "noise_std": 0.01}), stream=stream)
    before = {n: p.detach().clone() for n, p in learner.engine.named.items()}
    learner.strategy.after_step(batches(learner)[0])
    g = torch.Generator().manual_seed(0 * 7919 + 3)  # the run's seed, as every rank seeds it
    for name in sorted(before):
        noise = torch.randn(before[name].shape, generator=g)
        torch.testing.assert_close(learner.engine.named[name].detach(), 0.9 * before[name] + 0.01 * noise)


@pytest.mark.parametrize("strategy, key", [
    ({"name": "cbp", "replacement_rate": 1.5}, "strategy.replacement_rate"),
    ({"name": "cbp", "decay": 1.0}, "strategy.decay"),
    ({"name": "cbp", "utility": "magic"}, "strategy.utility"),
    ({"name": "redo", "every": 0}, "strategy.every"),
    ({"name": "l2", "lam": -1.0}, "strategy.lam"),
    ({"name": "shrink_perturb", "shrink": 1.0}, "strategy.shrink"),
])
def test_bad_options_are_one_line_naming_the_key(strategy, key):
    with pytest.raises(ConfigError) as info:
        config(strategy)
    assert str(info.value).startswith(key) and "\n" not in str(info.value)


def test_the_loss_of_plasticity_experiment_at_small_scale():
    """configs/online_permuted_mnist_cbp.yaml, cut to 3 short tasks on the plain engine: real
    MNIST, fresh permutations, continual backprop replacing units in every layer."""
    from pathlib import Path

    from lifelong.platform.config import load_config

    path = Path(__file__).resolve().parents[2] / "configs" / "online_permuted_mnist_cbp.yaml"
    cfg = load_config(path, ["stream.n_tasks=3", "stream.train_samples_per_task=1600",
                             "stream.test_samples_per_task=200", "engine.backend=torch",
                             "strategy.replacement_rate=0.01", "strategy.maturity_threshold=20"])
    learner = Learner(cfg)
    result = learner.run()
    assert min(learner.strategy.replaced.values()) >= 1
    assert all(result.R[i][i] > 0.6 for i in range(3)) and len(result.online) == 3
