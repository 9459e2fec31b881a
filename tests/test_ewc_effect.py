"""EWC does what it is for: on a small seeded permuted stream it keeps more of task 0
than naive fine-tuning, and joint training (the upper bound) keeps at least as much."""

from __future__ import annotations

from lifelong.platform.learner import Learner
from tests.conftest import make_config

STREAM = {"dataset": "mnist", "scenario": "permuted", "n_tasks": 3, "setting": "domain",
          "train_samples_per_task": 2000, "test_samples_per_task": 1000}


def task0_after_stream(strategy: dict) -> float:
    cfg = make_config(stream=STREAM, model={"hidden": [100, 100]}, strategy=strategy,
                      optim={"name": "adam", "lr": 0.001}, train={"epochs": 3, "batch_size": 64},
                      engine={"backend": "torch"}, seed=0)
    return Learner(cfg).run().R[-1][0]


def test_ewc_keeps_more_of_task_0_than_naive_and_joint_keeps_most():
    naive = task0_after_stream({"name": "naive"})
    ewc = task0_after_stream({"name": "ewc", "lam": 1000.0})
    joint = task0_after_stream({"name": "joint"})
    assert ewc > naive + 0.1, (naive, ewc)
    assert joint >= ewc, (ewc, joint)
