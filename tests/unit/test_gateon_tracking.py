"""What a GateON run leaves in MLflow (a real SQLite store): the available-unit fraction per
layer as a curve over the task index, the detection scores, and the context-per-task
matrix as JSON and PNG; and the strategy hooks that carry them (``task_metrics``,
``matrices``) for any strategy."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from lifelong.platform.learner import Learner
from lifelong.platform.tracking import Tracker
from lifelong.strategies.gateon import GateON
from tests.unit.test_gateon import PERMUTED, config


def test_a_detect_run_logs_availability_per_task_detection_scores_and_the_context_matrix(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("gateon")).info.run_id
    tracker = Tracker(uri, run_id, tmp_path / "spool")
    learner = Learner(config({"context": "detect", "contexts": 8, "ratio": 1.1, "window": 5,
                              "confidence_rate": 0.2}, stream={**PERMUTED, "n_tasks": 3}, hidden=64),
                      tracker=tracker)
    learner.run()
    tracker.close()
    strategy: GateON = learner.strategy  # type: ignore[assignment]

    available = client.get_metric_history(run_id, "gateon/available/hidden0")
    assert sorted(m.step for m in available) == [0, 1, 2]  # step = task index
    assert [m.value for m in sorted(available, key=lambda m: m.step)][-1] == \
        strategy.available_fraction()["hidden0"]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["gateon/contexts"] == strategy.detector.known >= 2
    assert metrics["gateon/detect/recall"] == 1.0 and metrics["gateon/detect/precision"] == 1.0

    artifacts = Path(tmp_path / "artifacts")
    client.download_artifacts(run_id, "", str(artifacts.mkdir() or artifacts))
    matrix = json.loads((artifacts / "strategy" / "gateon_context_per_task.json").read_text())
    assert (matrix["rows"], matrix["columns"]) == ("task", "context")
    steps = matrix["values"]
    assert len(steps) == 3 and sum(map(sum, steps)) == learner.result.steps
    for task, row in enumerate(steps):  # each task spent most of its steps in its own context
        assert max(range(len(row)), key=row.__getitem__) == task
    chosen = json.loads((artifacts / "strategy" / "gateon_eval_context_per_task.json").read_text())
    assert [row.index(1.0) for row in chosen["values"]] == strategy.eval_chosen == [0, 1, 2]
    for name in ("gateon_context_per_task.png", "gateon_eval_context_per_task.png"):
        assert (artifacts / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
