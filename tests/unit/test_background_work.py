"""Boundary work off the critical path: jobs keep their order, errors are not lost, and a
checkpoint directory is only ever seen complete."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lifelong.platform import checkpoint
from lifelong.platform.background import SerialExecutor
from lifelong.platform.checkpoint_store import KEEP, CheckpointStore


def test_jobs_run_in_submission_order_off_the_calling_thread():
    done: list[tuple[int, str]] = []
    serial = SerialExecutor("test")
    for i in range(20):
        serial.submit(lambda i=i: (time.sleep(0.001 * (i % 3)), done.append((i, threading.current_thread().name))))
    serial.wait()
    assert [i for i, _ in done] == list(range(20))
    assert {name for _, name in done} == {"test"}


def test_a_failed_job_is_raised_in_the_submitting_thread_and_later_jobs_are_dropped():
    ran: list[int] = []
    serial = SerialExecutor("test")
    serial.submit(ran.append, 1)
    serial.submit(lambda: 1 / 0)
    serial.submit(ran.append, 3)  # after the failure: not run
    with pytest.raises(ZeroDivisionError):
        serial.wait()
    serial.submit(ran.append, 4)  # the executor goes on once the error was reported
    serial.wait()
    assert ran == [1, 4]


def state(next_task: int) -> dict:
    return {"format": checkpoint.FORMAT, "next_task": next_task, "weights": torch.full((3,), float(next_task))}


def test_checkpoint_store_keeps_the_newest_and_ignores_partial_writes(tmp_path):
    store = CheckpointStore(tmp_path / "lifelong-run")
    assert store.latest() is None
    for task in (1, 2, 3):
        store.save(state(task))  # in the background
    store.close()
    kept = sorted(p.name for p in (tmp_path / "lifelong-run").iterdir())
    assert kept == ["task-00002", "task-00003"] and KEEP == 2
    (tmp_path / "lifelong-run" / ".task-00004.partial").mkdir()  # a writer killed mid-write
    latest = store.latest()
    assert latest is not None and latest.parent.name == "task-00003"
    assert torch.load(latest, weights_only=True)["weights"].tolist() == [3.0, 3.0, 3.0]


def test_a_failed_checkpoint_write_surfaces_at_the_next_boundary(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = CheckpointStore(blocker / "lifelong-run")  # cannot be created
    store.save(state(1))
    with pytest.raises(OSError):
        store.save(state(2))


def test_a_background_tracker_delivers_everything_in_order_by_close(tmp_path):
    from mlflow.tracking import MlflowClient

    from lifelong.platform.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("background")).info.run_id
    tracker = Tracker(uri, run_id, tmp_path / "spool", background=True)
    R: list[list[float]] = []
    for task in range(3):
        for step in range(5):
            tracker.metrics({"train/loss": 10 * task + step}, step=10 * task + step)
        R.append([0.5 + 0.1 * task] * 3)
        tracker.task_end(R, [0.1] * 3, "stream", [0.9] * len(R), render=True)
        R[-1][0] = -1.0  # the learner's own list changes later: what was sent must not
    assert tracker.close()
    loss = client.get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value) for m in loss) == [(s, float(s)) for t in range(3) for s in range(10 * t, 10 * t + 5)]
    assert [m.value for m in sorted(client.get_metric_history(run_id, "acc/task_0"), key=lambda m: m.step)] \
        == pytest.approx([0.5, 0.6, 0.7])
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/accuracy_heatmap.png", "plots/new_task_accuracy.png"} <= plots
