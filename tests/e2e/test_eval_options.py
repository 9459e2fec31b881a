"""The real path with the long-stream options: ``eval.tasks=seen``, ``eval.every`` and
``engine.checkpoint_every`` through the learner group, the stream actor and MLflow: what is not
evaluated is not logged, the matrix artifact marks it null, and only every k-th boundary
(and the last) leaves a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from lifelong.platform.driver import run
from lifelong.platform.learner import Learner
from tests.conftest import make_config

pytestmark = pytest.mark.slow
GROUPS = dict(stream={"dataset": "digits", "scenario": "permuted", "n_tasks": 4, "setting": "domain",
                      "train_samples_per_task": 320},
              model={"hidden": [32]}, strategy={"name": "naive"}, optim={"name": "sgd", "lr": 0.1},
              train={"epochs": 1, "batch_size": 32}, probes={"enabled": False},
              eval={"tasks": "seen", "every": 2}, tracking={"experiment": "eval-options"}, seed=2)


def test_seen_tasks_every_second_task_and_checkpoints_every_second_boundary(ray_cluster, tmp_path,
                                                                            monkeypatch):
    reference = Learner(make_config(**GROUPS, engine={"backend": "torch"})).run().R
    monkeypatch.chdir(tmp_path)
    outcome = run(make_config(**GROUPS, engine={"workers": 1, "checkpoint_every": 2}), progress=False)
    for i, (got, want) in enumerate(zip(outcome.R, reference, strict=True)):
        evaluated = [j for j, a in enumerate(want) if not math.isnan(a)]
        assert evaluated == ([] if i in (0, 2) else list(range(i + 1)))
        assert [j for j, a in enumerate(got) if not math.isnan(a)] == evaluated
        assert [got[j] for j in evaluated] == pytest.approx([want[j] for j in evaluated], abs=1e-9)

    client = MlflowClient(outcome.tracking_uri)
    metrics = client.get_run(outcome.run_id).data.metrics
    assert {m.step for m in client.get_metric_history(outcome.run_id, "acc/task_0")} == {1, 3}
    assert {m.step for m in client.get_metric_history(outcome.run_id, "acc/task_3")} == {3}
    assert "cl/fwt" not in metrics and "cl/bwt" in metrics and "cl/acc" in metrics
    assert len(client.get_metric_history(outcome.run_id, "acc/online")) == 4  # every task

    saved = sorted(Path(".lifelong/ray").glob(f"lifelong-{outcome.run_id}/task-*/state.pt"))
    assert [torch.load(p, weights_only=True)["next_task"] for p in saved] == [2, 4]
