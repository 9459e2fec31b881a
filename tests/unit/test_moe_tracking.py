"""What a task-free MoE run leaves in MLflow (a real SQLite store): the routing heatmap per
expert layer and the task-inference matrix (JSON and PNG), the experts frozen and the
task-inference accuracy as curves over the task index, and the balance and router z-loss
terms as training curves."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from lifelong.platform.learner import Learner
from lifelong.platform.tracking import Tracker
from lifelong.strategies.moe import MoE
from tests.unit.test_moe_resume import FREE, config

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_free_run_logs_routing_per_layer_task_inference_and_its_losses(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("moe")).info.run_id
    tracker = Tracker(uri, run_id, tmp_path / "spool")
    learner = Learner(config(FREE, log_every=5), tracker=tracker)
    learner.run()
    tracker.close()
    strategy: MoE = learner.strategy  # type: ignore[assignment]
    n_tasks = len(learner.result.R)

    for name in ("moe/experts_frozen", "moe/task_inference"):  # step = task index
        assert sorted(m.step for m in client.get_metric_history(run_id, name)) == list(range(n_tasks)), name
    metrics = client.get_run(run_id).data.metrics
    assert metrics["moe/experts_frozen"] == float(strategy.frozen.sum(1).double().mean()) > 0
    final = strategy.inference[-1]  # the last evaluation's, not the one before it
    assert metrics["moe/task_inference"] == sum(final) / len(final) > 0.5
    for name in ("train/moe/balance", "train/moe/router_z"):  # loss terms: per logged step
        history = client.get_metric_history(run_id, name)
        assert history and all(m.value > 0 for m in history), name

    artifacts = Path(tmp_path / "artifacts")
    client.download_artifacts(run_id, "", str(artifacts.mkdir() or artifacts))
    layers = [prefix.replace(".", "_") for prefix, _ in strategy.layers]
    assert len(layers) == 2
    for layer in layers:
        routing = json.loads((artifacts / "strategy" / f"moe_routing_{layer}.json").read_text())
        assert (routing["rows"], routing["columns"]) == ("task", "expert")
        shares = routing["values"]
        assert len(shares) == n_tasks and all(abs(sum(row) - 1.0) < 1e-9 for row in shares)
        for task, row in enumerate(shares):  # each task routed only to the experts active in it
            assert sum(row[2 * (task + 1):]) == 0.0 and max(row) > 0, (layer, task, row)
        assert (artifacts / "plots" / f"moe_routing_{layer}.png").read_bytes()[:8] == PNG
    inference = json.loads((artifacts / "strategy" / "moe_task_inference.json").read_text())
    assert (inference["rows"], inference["columns"]) == ("evaluation after task", "task")
    assert inference["values"][-1] == final and len(inference["values"]) == n_tasks
    assert (artifacts / "plots" / "moe_task_inference.png").read_bytes()[:8] == PNG
