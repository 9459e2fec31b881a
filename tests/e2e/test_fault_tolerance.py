"""A worker process killed mid-task: the driver restarts the worker group, which resumes from
the last task-boundary checkpoint and ends with the accuracy matrix of an uninterrupted run.

The reference is one plain torch worker in-process; the faulted run is 2 DeepSpeed workers
at ZeRO-2, so the tolerance is the sharding-equivalence one (test_sharding_equivalence.py):
on this machine the matrices agree exactly."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lifelong.platform.driver import run
from lifelong.platform.learner import Learner
from tests.conftest import make_config

pytestmark = pytest.mark.slow
TOLERANCE = 0.012
GROUPS = dict(stream={"dataset": "digits", "scenario": "permuted", "n_tasks": 3, "setting": "domain"},
              model={"hidden": [64, 64]}, strategy={"name": "replay", "buffer_size": 200},
              optim={"name": "adam", "lr": 0.002},
              train={"epochs": 8, "batch_size": 16, "eval_batch_size": 256, "log_every": 20},
              tracking={"experiment": "faults"}, seed=3)


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def registered_checkpoint() -> bool:
    """A complete checkpoint is on disk (it appears under its name only once written)."""
    return any(Path(".lifelong/ray").glob("lifelong-*/task-*/state.pt"))


def training_worker_pids() -> list[int]:
    import ray
    from ray.util.state import list_actors

    here = ray.get_runtime_context().gcs_address  # this test's Ray, whatever else runs here
    return [a.pid for a in list_actors(address=here, filters=[("class_name", "=", "LearnerProcess"),
                                                ("state", "=", "ALIVE")])]


def test_a_killed_worker_resumes_from_the_last_boundary(ray_cluster, tmp_path, monkeypatch):
    reference = Learner(make_config(**GROUPS, engine={"backend": "torch"})).run().R
    monkeypatch.chdir(tmp_path)
    cfg = make_config(**GROUPS, engine={"workers": 2, "zero_stage": 2, "max_failures": 1})
    box: dict = {}

    def fit() -> None:
        try:
            box["outcome"] = run(cfg, progress=False)
        except BaseException as err:  # noqa: BLE001 - reported below
            box["error"] = err

    thread = threading.Thread(target=fit)
    thread.start()
    wait_for(registered_checkpoint, 300, "the checkpoint after task 0")
    victim = wait_for(training_worker_pids, 30, "the training workers")[-1]
    os.kill(victim, signal.SIGKILL)  # mid task 1
    thread.join(timeout=600)
    assert "error" not in box, box.get("error")
    outcome = box["outcome"]

    client = MlflowClient(outcome.tracking_uri)
    assert client.get_run(outcome.run_id).info.status == "FINISHED"
    resumed = client.get_metric_history(outcome.run_id, "fault/resumed_from_task")
    assert [m.value for m in resumed] == [1.0], "the restarted group resumed after task 0"
    assert {m.step for m in client.get_metric_history(outcome.run_id, "acc/task_2")} == {0, 1, 2}
    diff = max(abs(a - b) for ra, rb in zip(reference, outcome.R) for a, b in zip(ra, rb))
    assert len(outcome.R) == 3 and diff <= TOLERANCE, (reference, outcome.R)
