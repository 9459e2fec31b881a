"""End to end through the real path: Ray Train worker + DeepSpeed engine + MLflow SQLite."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lifelong.platform.cli import main
from lifelong.platform.driver import run
from tests.conftest import make_config
from tests.e2e.user_shell import lifelong

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PLOTS = ("accuracy_heatmap", "accuracy_over_time", "new_task_accuracy", "plasticity")

SPLIT_DIGITS = dict(
    stream={"dataset": "digits", "scenario": "split", "n_tasks": 3, "classes_per_task": 2,
            "setting": "task"},
    model={"hidden": [64, 64]},
    strategy={"name": "ewc", "lam": 100.0},
    optim={"name": "sgd", "lr": 0.05, "momentum": 0.9},
    train={"epochs": 5, "batch_size": 32, "log_every": 5},
    probes={"every": 20},
    tracking={"experiment": "e2e"},
)


@pytest.fixture(scope="module")
def split_digits_run(ray_cluster, tmp_path_factory):
    """One `lifelong run` of EWC on split digits: 1 DeepSpeed worker, MLflow SQLite."""
    here, workdir = os.getcwd(), tmp_path_factory.mktemp("split_digits")
    os.chdir(workdir)
    try:
        return run(make_config(**SPLIT_DIGITS), progress=False), workdir
    finally:
        os.chdir(here)


def test_ewc_on_split_digits_lands_in_mlflow(split_digits_run):
    outcome, tmp_path = split_digits_run

    client = MlflowClient(outcome.tracking_uri)
    assert outcome.tracking_uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
    r = client.get_run(outcome.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags["strategy"] == "ewc" and r.data.tags["stream"] == "split_digits_task"
    assert r.data.params["strategy.lam"] == "100.0" and r.data.params["engine.backend"] == "deepspeed"

    # Per-task metrics with step = task index; sane accuracies.
    for key in ("acc/task_0", "acc/task_1", "acc/task_2", "cl/acc"):
        history = client.get_metric_history(outcome.run_id, key)
        assert [m.step for m in history] == [0, 1, 2], key
        assert all(0.0 <= m.value <= 1.0 for m in history)
    for key in ("cl/bwt", "cl/fwt", "cl/forgetting"):
        assert [m.step for m in client.get_metric_history(outcome.run_id, key)] == [1, 2]
    assert len(client.get_metric_history(outcome.run_id, "train/loss")) >= 5
    assert r.data.metrics["time/startup_seconds"] > 0
    # Plasticity: probe curves against the step, task-end probes and online accuracy per task.
    probed = client.get_metric_history(outcome.run_id, "plasticity/hidden1/effective_rank")
    assert len(probed) >= 7 and all(m.value > 1.0 for m in probed)  # 5 periodic, 3 task ends, 1 shared
    assert len({m.step for m in probed}) == len(probed)  # a task end on a probe step probes once
    assert {m.step for m in probed} >= {20, 40, 60}
    for key in ("plasticity_at_task_end/hidden0/dead", "acc/online"):
        assert [m.step for m in client.get_metric_history(outcome.run_id, key)] == [0, 1, 2], key
    assert 0.0 < r.data.metrics["time/probe_overhead"] < 1.0

    # The accuracy matrix artifact matches what the driver read back, and learning happened.
    matrix = json.loads(Path(client.download_artifacts(outcome.run_id, "accuracy_matrix.json"))
                        .read_text())
    assert matrix["R"] == outcome.R and len(matrix["R"]) == 3 and len(matrix["init"]) == 3
    assert all(matrix["R"][i][i] > 0.85 for i in range(3)), matrix["R"]
    assert r.data.metrics["cl/acc"] == pytest.approx(sum(matrix["R"][2]) / 3)

    plots = {a.path for a in client.list_artifacts(outcome.run_id, "plots")}
    assert plots == {f"plots/{name}.png" for name in PLOTS}
    for path in plots:
        assert Path(client.download_artifacts(outcome.run_id, path)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config_yaml = Path(client.download_artifacts(outcome.run_id, "config.yaml")).read_text()
    assert "lam: 100.0" in config_yaml


def test_two_workers_at_zero_2_reproduce_the_single_worker_run(split_digits_run, tmp_path, monkeypatch):
    """The driver's multi-worker path: same matrix (see test_sharding_equivalence for why
    and the tolerance), and each worker logged half the optimizer state."""
    single, single_dir = split_digits_run
    monkeypatch.chdir(tmp_path)
    cfg = make_config(**dict(SPLIT_DIGITS, engine={"workers": 2, "zero_stage": 2}))
    sharded = run(cfg, progress=False)
    diff = max(abs(a - b) for ra, rb in zip(single.R, sharded.R) for a, b in zip(ra, rb))
    assert diff <= 0.012, (single.R, sharded.R)
    memory = "memory/optimizer_state_bytes_per_worker"
    one = MlflowClient(single.tracking_uri).get_run(single.run_id).data.metrics[memory]
    two = MlflowClient(sharded.tracking_uri).get_run(sharded.run_id).data.metrics[memory]
    assert two / one == pytest.approx(0.5, abs=0.05)


def test_diverged_worker_fails_with_one_line_and_keeps_the_run(ray_cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = dict(SPLIT_DIGITS, optim={"name": "sgd", "lr": 1e6}, strategy={"name": "naive"},
               train={"epochs": 3, "batch_size": 32, "log_every": 1})
    (tmp_path / "diverge.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    code = main(["run", "diverge.yaml", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("lifelong: error: training diverged"), err[-1]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    (run_,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run_.info.status == "FAILED"
    assert "strategy.name" in run_.data.params  # what was recorded before the failure is kept


def test_cli_runs_a_user_strategy_by_file_path_from_the_users_directory(tmp_path):
    """The user's command, as a user types it, in a fresh process with the user's
    environment: their own strategy file, in their own directory, loaded by file path
    inside the Ray workers; the end of the run says where to look."""
    shutil.copy(ROOT / "strategy_examples" / "clip_strategy.py", tmp_path / "my_clip.py")
    plugin = "my_clip.py:ClipGrads"
    out = lifelong("run", str(ROOT / "configs/split_digits_ewc.yaml"), "train.epochs=1",
                   f"strategy.name={plugin}", "strategy.max_norm=0.5", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "accuracy matrix" in out.stdout
    assert "(start it with: lifelong ui)" in out.stdout and "workflowType=machine_learning" in out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    (run_,) = client.search_runs([client.get_experiment_by_name("split-digits").experiment_id])
    assert run_.info.status == "FINISHED"
    assert run_.data.tags["strategy"] == plugin and run_.data.params["strategy.max_norm"] == "0.5"
    assert "strategy.lam" not in run_.data.params
    assert "train/clipped_params" in run_.data.metrics


def test_a_run_lands_in_an_mlflow_server(ray_cluster, mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_config(**dict(SPLIT_DIGITS, train={"epochs": 1, "batch_size": 32, "log_every": 5},
                             tracking={"uri": mlflow_server, "experiment": "server"}))
    outcome = run(cfg, progress=False)
    client = MlflowClient(mlflow_server)
    r = client.get_run(outcome.run_id)
    assert outcome.tracking_uri == mlflow_server and r.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(outcome.run_id, "cl/acc")] == [0, 1, 2]
    assert {a.path for a in client.list_artifacts(outcome.run_id, "plots")} == {
        f"plots/{name}.png" for name in PLOTS}
    assert not (tmp_path / "mlruns.db").exists()  # nothing went to a local store instead
