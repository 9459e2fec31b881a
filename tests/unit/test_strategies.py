"""Strategy registry, preflight refusals, and the built-in strategies' hooks on a tiny stream."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lifelong.platform.config import build_config
from lifelong.platform.errors import ConfigError
from lifelong.platform.learner import Learner
from lifelong.platform.model import mask_logits
from lifelong.strategies.base import Strategy
from lifelong.strategies.ewc import EWC
from lifelong.strategies.joint import Joint
from lifelong.strategies.naive import Naive
from lifelong.strategies.registry import available, builtin_strategies, resolve_strategy
from lifelong.strategies.replay import Replay
from lifelong.streams.batches import Batch, Samples, epoch_seed, n_batches, train_batches
from lifelong.streams.feed import StreamServer
from lifelong.streams.registry import build_stream
from tests.unit import plugin_fixture

BUILTINS = ("naive", "joint", "replay", "ewc", "cbp", "redo", "l2", "shrink_perturb", "gateon", "moe", "hnet")
PLUGIN = "tests.unit.plugin_fixture:MyStrategy"

STREAM = {"dataset": "digits", "scenario": "split", "n_tasks": 3, "classes_per_task": 2,
          "setting": "task", "train_samples_per_task": 64, "test_samples_per_task": 32}
TRAIN_ROWS = 64
BATCH = 16


def config(strategy: dict[str, Any], **groups: Any):
    raw = {"stream": STREAM, "model": {"hidden": [16]}, "strategy": strategy,
           "optim": {"name": "sgd", "lr": 0.1},
           "train": {"epochs": 1, "batch_size": BATCH, "eval_batch_size": 64},
           "engine": {"backend": "torch"}, "seed": 0}
    raw.update(groups)
    return build_config(raw)


@pytest.fixture(scope="module")
def stream():
    return build_stream(config({"name": "naive"}).stream, seed=0)


@pytest.fixture
def learner_for(stream):
    def make(strategy: dict[str, Any]) -> Learner:
        return Learner(config(strategy), stream=stream)
    return make


def task_batches(learner: Learner, task_index: int) -> list[Batch]:
    task = learner.feed.server.stream.tasks[task_index]
    return list(train_batches(Samples.of(task), learner.featurize, BATCH,
                              epoch_seed(0, task_index, 0)))


def perturb(learner: Learner, seed: int, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with learner.ctx.gathered() as params:
        for value in params.values():
            value.add_(torch.randn(value.shape, generator=g) * scale)


def snapshot(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in values.items()}


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Through bytes, as a checkpoint would: no tensor is shared with the original."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


# -- registry ------------------------------------------------------------------------------------------

def test_builtins_resolve_by_name():
    assert resolve_strategy("naive") is Naive
    assert resolve_strategy("joint") is Joint
    assert resolve_strategy("replay") is Replay
    assert resolve_strategy("ewc") is EWC
    assert set(builtin_strategies()) == set(BUILTINS)
    assert set(BUILTINS) <= set(available())
    for name, cls in builtin_strategies().items():
        assert cls.name == name and issubclass(cls, Strategy) and cls.description


def test_unknown_name_lists_known_strategies():
    with pytest.raises(ConfigError) as info:
        resolve_strategy("sgd_plus")
    message = str(info.value)
    assert "'sgd_plus'" in message
    for name in BUILTINS:
        assert name in message
    assert "\n" not in message


@pytest.mark.parametrize("path", [PLUGIN, "tests.unit.plugin_fixture.MyStrategy"])
def test_dotted_path_resolves_a_plugin(path):
    assert resolve_strategy(path) is plugin_fixture.MyStrategy


def test_dotted_path_plugin_gets_its_own_config_schema():
    cfg = config({"name": PLUGIN, "alpha": 2})
    assert isinstance(cfg.strategy, plugin_fixture.RecorderConfig)
    assert cfg.strategy.alpha == 2.0 and type(cfg.strategy.alpha) is float
    assert cfg.strategy.name == PLUGIN
    with pytest.raises(ConfigError) as info:
        config({"name": PLUGIN, "beta": 1})
    assert "strategy.beta" in str(info.value)
    assert "alpha" in str(info.value) and "tag" in str(info.value)


@pytest.mark.parametrize("path", ["tests.unit.plugin_fixture:NotAStrategy",
                                  "tests.unit.plugin_fixture:not_a_class",
                                  "lifelong.platform.config:RunConfig"])
def test_dotted_path_to_a_non_strategy_is_refused(path):
    with pytest.raises(ConfigError) as info:
        resolve_strategy(path)
    assert "not a lifelong Strategy subclass" in str(info.value)
    assert path in str(info.value)


@pytest.mark.parametrize("path", ["tests.unit.plugin_fixture:Missing",
                                  "tests.unit.no_such_module:MyStrategy"])
def test_dotted_path_that_cannot_be_imported_is_refused(path):
    with pytest.raises(ConfigError) as info:
        resolve_strategy(path)
    assert "cannot import" in str(info.value)


def test_plugin_hooks_are_called_in_order(stream):
    learner = Learner(config({"name": PLUGIN}), stream=stream)
    result = learner.run()
    calls = learner.strategy.calls
    steps = n_batches(TRAIN_ROWS, BATCH)  # 4 per task
    expected = [("wrap_model", -1)]
    for t in range(3):
        expected += [("on_task_start", t)]
        expected += [("augment_batch", t), ("transform_grads", -1), ("after_step", t)] * steps
        expected += [("on_task_end", t)]
    assert calls == expected
    assert result.steps == 3 * steps
    assert len(result.R) == 3 and all(len(row) == 3 for row in result.R)


# -- replay ----------------------------------------------------------------------------------------------

def test_replay_reservoir_fills_then_caps(learner_for):
    learner = learner_for({"name": "replay", "buffer_size": 20})
    replay: Replay = learner.strategy  # type: ignore[assignment]
    assert replay.filled == 0 and replay.buffer is None
    seen_rows = set()
    filled, rows = [], 0
    for t in range(3):
        for batch in task_batches(learner, t):
            out = replay.augment_batch(batch)
            if replay.filled == 0:
                assert out is batch
            else:
                assert len(out) == 2 * len(batch)  # replay_batch_size None = as many as the batch
                assert torch.equal(out.x[:len(batch)], batch.x)
            replay.after_step(batch)
            rows += len(batch)
            seen_rows |= {(tuple(x.tolist()), int(y), int(k))
                          for x, y, k in zip(batch.x, batch.y, batch.task)}
            filled.append(replay.filled)
            assert replay.seen == rows
            assert replay.filled == min(rows, 20)
            assert replay.buffer.x.shape[0] == 20 and len(replay.buffer.y) == 20
    assert filled[:3] == [16, 20, 20]
    assert filled[-1] == 20
    # every buffered row is a row the learner saw, with its label and task
    buffered = {(tuple(x.tolist()), int(y), int(k))
                for x, y, k in zip(replay.buffer.x, replay.buffer.y, replay.buffer.task)}
    assert buffered <= seen_rows
    # reservoir sampling keeps old tasks too (a FIFO of the last 20 rows would hold task 2 only)
    assert set(replay.buffer.task.tolist()) == {0, 1, 2}


def test_replay_augment_adds_rows_from_the_buffer(learner_for):
    learner = learner_for({"name": "replay", "buffer_size": 8, "replay_batch_size": 5})
    replay: Replay = learner.strategy  # type: ignore[assignment]
    first, second = task_batches(learner, 0)[:2]
    replay.after_step(first)
    out = replay.augment_batch(second)
    assert len(out) == len(second) + 5
    assert torch.equal(out.x[:len(second)], second.x) and torch.equal(out.y[:len(second)], second.y)
    buffered = {tuple(x.tolist()) for x in replay.buffer.x[:replay.filled]}
    assert all(tuple(x.tolist()) in buffered for x in out.x[len(second):])


def test_replay_in_a_full_run(learner_for):
    learner = learner_for({"name": "replay", "buffer_size": 20})
    result = learner.run()
    assert learner.strategy.filled == 20
    assert learner.strategy.seen == 3 * TRAIN_ROWS  # after_step sees the current task's rows only
    assert result.steps == 3 * n_batches(TRAIN_ROWS, BATCH)


def test_replay_state_dict_round_trip(learner_for):
    make = lambda: learner_for({"name": "replay", "buffer_size": 12})  # noqa: E731
    learner = make()
    original: Replay = learner.strategy  # type: ignore[assignment]
    batches = task_batches(learner, 0) + task_batches(learner, 1)
    for batch in batches[:3]:
        original.after_step(batch)
    restored = Replay(learner.cfg.strategy, learner.ctx)
    restored.load_state_dict(roundtrip(original.state_dict()))
    assert restored.filled == original.filled == 12 and restored.seen == original.seen == 48
    assert torch.equal(restored.buffer.x, original.buffer.x)
    # the restored copy continues exactly like the original: same draws, same reservoir choices
    for batch in batches[3:]:
        a, b = original.augment_batch(batch), restored.augment_batch(batch)
        assert torch.equal(a.x, b.x) and torch.equal(a.task, b.task)
        original.after_step(batch)
        restored.after_step(batch)
    assert torch.equal(restored.buffer.x, original.buffer.x)
    assert torch.equal(restored.buffer.y, original.buffer.y)
    assert restored.seen == original.seen == 128


# -- joint -----------------------------------------------------------------------------------------------

def test_joint_trains_on_the_union_of_seen_tasks(stream):
    """Joint's training set for task t is tasks 0..t's rows, served by the stream."""
    server = StreamServer(stream, BATCH, epochs=1, seed=0, train_on=Joint.train_on)
    parts = [Samples.of(t) for t in stream.tasks]
    for t in range(3):
        union = server.training_set(t)
        expected = Samples.cat(parts[: t + 1])
        assert len(union) == (t + 1) * TRAIN_ROWS
        assert torch.equal(union.x, expected.x)
        assert torch.equal(union.y, expected.y)
        assert torch.equal(union.task, expected.task)
        assert set(union.task.tolist()) == set(range(t + 1))


def test_joint_run_steps_over_the_growing_union(learner_for):
    result = learner_for({"name": "joint"}).run()
    # 64, 128, 192 rows in batches of 16: 4 + 8 + 12 steps
    assert result.steps == 4 + 8 + 12


def test_naive_has_no_state():
    naive = Naive(build_config({}).strategy, ctx=None)
    assert naive.state_dict() == {}
    naive.load_state_dict({})
    with pytest.raises(ValueError):
        naive.load_state_dict({"buffer": 1})


# -- EWC -------------------------------------------------------------------------------------------------

def manual_fisher(learner: Learner, data: Samples) -> dict[str, torch.Tensor]:
    """Mean over rows of the squared per-row gradient, one autograd pass per row."""
    module = learner.engine.module
    total = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
    batch = learner.featurize(data)
    for row in range(len(batch)):
        module.zero_grad(set_to_none=True)
        logits = mask_logits(module(batch.x[row:row + 1]), batch.task[row:row + 1], learner.masks)
        F.cross_entropy(logits, batch.y[row:row + 1]).backward()
        for n, p in module.named_parameters():
            total[n] += p.grad.pow(2)
    module.zero_grad(set_to_none=True)
    return {n: v / len(batch) for n, v in total.items()}


def grads_after_backward(learner: Learner, batch: Batch) -> dict[str, torch.Tensor]:
    module = learner.engine.module
    module.zero_grad(set_to_none=True)
    logits = mask_logits(module(batch.x), batch.task, learner.masks)
    learner.engine.backward(F.cross_entropy(logits, batch.y))
    return {n: p.grad for n, p in module.named_parameters()}


def test_ewc_fisher_is_nonnegative_with_param_shapes_and_exact(learner_for):
    learner = learner_for({"name": "ewc", "fisher_samples": None, "fisher_batch_size": 24})
    ewc: EWC = learner.strategy  # type: ignore[assignment]
    for batch in task_batches(learner, 0):
        learner.train_step(batch)
    task = learner.feed.server.stream.tasks[0]
    data = Samples.of(task)
    fisher = ewc.estimate_fisher(task, data)
    params = dict(learner.engine.module.named_parameters())
    assert set(fisher) == set(params)
    for name, value in fisher.items():
        assert value.shape == params[name].shape
        assert bool((value >= 0).all())
    assert sum(float(v.sum()) for v in fisher.values()) > 0
    expected = manual_fisher(learner, data)
    for name in params:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-4, atol=1e-7)


def test_ewc_fisher_on_a_subset(learner_for):
    learner = learner_for({"name": "ewc", "fisher_samples": 10})
    task = learner.feed.server.stream.tasks[1]
    fisher = learner.strategy.estimate_fisher(task, Samples.of(task))
    g = torch.Generator().manual_seed(task.index)
    rows = torch.randperm(TRAIN_ROWS, generator=g)[:10].sort().values
    expected = manual_fisher(learner, Samples.of(task)[rows])
    for name, value in fisher.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-7)


def test_ewc_sets_no_pull_before_the_first_task_ends(learner_for):
    learner = learner_for({"name": "ewc"})
    for batch in task_batches(learner, 0)[:2]:
        learner.train_step(batch)
    assert learner.engine.rules.pulls == {}


def test_ewc_step_descends_on_the_penalty_gradient(learner_for):
    """After a task, the optimizer step (SGD, lr 0.1, no momentum) is
    theta - lr * (task gradient + lam * F * (theta - theta*)): the pull is fused into it."""
    lam, lr = 7.5, 0.1
    learner = learner_for({"name": "ewc", "lam": lam, "fisher_samples": None})
    ewc: EWC = learner.strategy  # type: ignore[assignment]
    for batch in task_batches(learner, 0):
        learner.train_step(batch)
    task0 = learner.feed.server.stream.tasks[0]
    fisher = ewc.estimate_fisher(task0, Samples.of(task0))
    anchor = snapshot(learner.ctx.full_params())
    ewc.on_task_end(task0, Samples.of(task0))
    perturb(learner, seed=1)  # move away from the anchor, as training on task 1 would
    theta = snapshot(learner.ctx.full_params())
    assert any(not torch.equal(theta[n], anchor[n]) for n in theta)
    task_grads = snapshot(grads_after_backward(learner, task_batches(learner, 1)[0]))
    learner.engine.step()
    after = learner.ctx.full_params()
    for name in theta:
        # d/dtheta of lam/2 * F (theta - theta*)^2  =  lam * (F*theta - F*theta*)
        penalty = lam * (fisher[name] * theta[name] - fisher[name] * anchor[name])
        expected = theta[name] - lr * (task_grads[name] + penalty)
        torch.testing.assert_close(after[name], expected, rtol=1e-5, atol=1e-6)
    assert any(float(penalty.abs().max()) > 1e-4 for penalty in
               (lam * fisher[n] * (theta[n] - anchor[n]) for n in theta))


def test_ewc_separate_mode_sums_fisher_and_anchors(learner_for):
    learner = learner_for({"name": "ewc", "mode": "separate", "fisher_samples": 32})
    ewc: EWC = learner.strategy  # type: ignore[assignment]
    fishers, anchors = [], []
    for t in range(2):
        task = learner.feed.server.stream.tasks[t]
        perturb(learner, seed=10 + t)
        fishers.append(ewc.estimate_fisher(task, Samples.of(task)))
        anchors.append(snapshot(learner.ctx.full_params()))
        ewc.on_task_end(task, Samples.of(task))
    for name in fishers[0]:
        torch.testing.assert_close(ewc.fisher_sum[name], fishers[0][name] + fishers[1][name])
        torch.testing.assert_close(ewc.anchor_sum[name], fishers[0][name] * anchors[0][name]
                                   + fishers[1][name] * anchors[1][name])


def test_ewc_online_mode_decays_the_old_fisher(learner_for):
    decay = 0.5
    learner = learner_for({"name": "ewc", "mode": "online", "decay": decay, "fisher_samples": 32})
    ewc: EWC = learner.strategy  # type: ignore[assignment]
    fishers = []
    for t in range(2):
        task = learner.feed.server.stream.tasks[t]
        perturb(learner, seed=20 + t)
        fishers.append(ewc.estimate_fisher(task, Samples.of(task)))
        ewc.on_task_end(task, Samples.of(task))
    latest = snapshot(learner.ctx.full_params())
    for name in fishers[0]:
        combined = decay * fishers[0][name] + fishers[1][name]
        torch.testing.assert_close(ewc.fisher_sum[name], combined)
        # one penalty, anchored at the latest optimum
        torch.testing.assert_close(ewc.anchor_sum[name], combined * latest[name])


def test_ewc_state_dict_round_trip(learner_for):
    learner = learner_for({"name": "ewc", "lam": 3.0, "fisher_samples": 32})
    ewc: EWC = learner.strategy  # type: ignore[assignment]
    task0 = learner.feed.server.stream.tasks[0]
    ewc.on_task_end(task0, Samples.of(task0))
    perturb(learner, seed=3)
    restored = EWC(learner.cfg.strategy, learner.ctx)
    restored.load_state_dict(roundtrip(ewc.state_dict()))
    assert set(restored.fisher_sum) == set(ewc.fisher_sum)
    for name in ewc.fisher_sum:
        assert torch.equal(restored.fisher_sum[name], ewc.fisher_sum[name])
        assert torch.equal(restored.anchor_sum[name], ewc.anchor_sum[name])
    # the restored strategy hands the step the same pulls (a resumed engine starts without)
    expected = dict(learner.engine.rules.pulls)
    for name in expected:
        learner.ctx.set_pull(name, 0.0, None, None)
    restored.load_state_dict(roundtrip(ewc.state_dict()))
    assert learner.engine.rules.pulls.keys() == expected.keys() == ewc.fisher_sum.keys()
    for name, (lam, curvature, offset) in expected.items():
        got = learner.engine.rules.pulls[name]
        assert got[0] == lam == 3.0
        assert torch.equal(got[1], curvature) and torch.equal(got[2], offset)


@pytest.mark.parametrize("strategy, key", [({"name": "ewc", "mode": "offline"}, "strategy.mode"),
                                          ({"name": "ewc", "decay": 1.5}, "strategy.decay"),
                                          ({"name": "replay", "buffer_size": 0},
                                           "strategy.buffer_size")])
def test_strategy_constructor_refuses_bad_values(stream, strategy, key):
    """Config validation refuses these first; a strategy built by hand refuses them too."""
    name, options = strategy["name"], {k: v for k, v in strategy.items() if k != "name"}
    learner = Learner(config({"name": name}), stream=stream)
    cls = type(learner.strategy)
    with pytest.raises(ConfigError) as info:
        cls(cls.Config(name=name, **options), learner.ctx)
    assert key in str(info.value)
