"""Plasticity probes inside the learner: when they run, what they measure, and that they
never change the training they watch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lifelong.platform.errors import ConfigError
from lifelong.platform.learner import Learner
from lifelong.platform.model import mask_logits
from lifelong.streams.registry import build_stream
from tests.conftest import make_config

STREAM = {"dataset": "digits", "scenario": "split", "n_tasks": 2, "classes_per_task": 2,
          "setting": "task", "train_samples_per_task": 160, "test_samples_per_task": 64}


def config(**probes) -> object:  # type: ignore[no-untyped-def]
    return make_config(stream=STREAM, model={"hidden": [16, 8]}, strategy={"name": "naive"},
                       optim={"name": "sgd", "lr": 0.1}, train={"epochs": 1, "batch_size": 16},
                       engine={"backend": "torch"}, probes=probes, seed=0)


@pytest.fixture(scope="module")
def stream():
    return build_stream(config().stream, seed=0)


def test_probes_run_every_k_steps_and_at_each_task_end(stream):
    result = Learner(config(every=4), stream=stream).run()  # 10 steps a task
    assert result.task_starts == [0, 10]
    # ends: 10 and 20; step 20 is both periodic and a task end: probed (and logged) once
    assert [step for step, _ in result.probes] == [4, 8, 10, 12, 16, 20]
    keys = set(result.probes[0][1])
    for layer in ("hidden0", "hidden1"):
        for measure in ("dead", "dormant", "rarely_active", "effective_rank", "stable_rank",
                        "mean_abs_weight", "grad_norm"):
            assert f"plasticity/{layer}/{measure}" in keys
    assert result.probe_seconds > 0
    assert len(result.online) == 2 and all(0.0 <= a <= 1.0 for a in result.online)


def test_probes_do_not_change_training(stream):
    probed = Learner(config(every=3), stream=stream).run()
    plain = Learner(config(enabled=False), stream=stream).run()
    assert probed.R == plain.R and probed.online == plain.online
    assert plain.probes == [] and plain.probe_seconds == 0.0


def test_probe_measures_the_current_model_on_the_probe_batch(stream):
    learner = Learner(config(every=0), stream=stream)
    learner.run()
    with learner.ctx.gathered() as params:  # kill 4 of hidden0's 16 units
        params["0.weight"][:4] = 0.0
        params["0.bias"][:4] = -1.0
    values = learner.run_probe()
    assert values["plasticity/hidden0/dead"] >= 0.25
    batch = learner.probe_batch
    model = learner.engine.module
    model.zero_grad()
    F.cross_entropy(mask_logits(model(batch.x), batch.task, learner.masks), batch.y).backward()
    expected = torch.cat([model[0].weight.grad.flatten(), model[0].bias.grad.flatten()]).norm()
    assert values["plasticity/hidden0/grad_norm"] == pytest.approx(float(expected), rel=1e-5)
    assert values["plasticity/hidden0/mean_abs_weight"] == pytest.approx(
        float(model[0].weight.detach().abs().mean()), rel=1e-6)


@pytest.mark.parametrize("key, value", [("every", -1), ("rows", 0), ("dormant_tau", -0.1)])
def test_bad_probe_options_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"probes.{key}"):
        config(**{key: value})


def test_probes_on_a_model_without_hidden_units_are_refused_before_compute():
    with pytest.raises(ConfigError, match="probes.enabled: the plasticity probes need a hidden layer"):
        make_config(model={"hidden": []})
    assert make_config(model={"hidden": []}, probes={"enabled": False}).model.hidden == []


def test_a_task_end_on_a_probe_step_reuses_the_probe_and_logs_it_once(stream, tmp_path):
    """Task 0 ends at step 10, a multiple of every=5: one probe there, logged once to MLflow
    (step 10), and the same measures as plasticity_at_task_end at task 0."""
    from mlflow.tracking import MlflowClient

    from lifelong.platform.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("probes")).info.run_id
    tracker = Tracker(uri, run_id, tmp_path / "spool")
    result = Learner(config(every=5), tracker=tracker, stream=stream).run()
    tracker.close()
    assert [step for step, _ in result.probes] == [5, 10, 15, 20]
    history = client.get_metric_history(run_id, "plasticity/hidden0/dead")
    assert sorted(m.step for m in history) == [5, 10, 15, 20]
    at_end = {m.step: m.value for m in client.get_metric_history(run_id, "plasticity_at_task_end/hidden0/grad_norm")}
    probed = dict(result.probes)
    assert at_end == pytest.approx({0: probed[10]["plasticity/hidden0/grad_norm"],
                                    1: probed[20]["plasticity/hidden0/grad_norm"]})
