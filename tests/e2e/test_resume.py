"""`lifelong run --resume RUN_ID`: a run stopped mid-task (Ctrl-C) goes on from its last
task-boundary checkpoint into the same MLflow run, and ends with the matrix of a run that
never stopped. Real CLI processes, each with its own embedded Ray (no shared cluster)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lifelong.platform.learner import Learner
from tests.conftest import make_config
from tests.e2e.test_fault_tolerance import registered_checkpoint, wait_for
from tests.e2e.user_shell import LIFELONG, user_env

pytestmark = pytest.mark.slow
OVERRIDES = ["stream.dataset=digits", "stream.scenario=permuted", "stream.n_tasks=3",
             "stream.setting=domain", "model.hidden=[64,64]", "strategy.name=ewc", "strategy.lam=50",
             "strategy.fisher_samples=300", "optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.9",
             "train.epochs=30", "train.batch_size=16", "tracking.experiment=resume", "seed=5"]


def lifelong(*args: str, cwd: Path) -> subprocess.Popen:
    """The user's command in a fresh process, with the user's environment."""
    return subprocess.Popen([LIFELONG, *args], cwd=cwd, env=user_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_stopped_run_resumes_into_the_same_mlflow_run(tmp_path, monkeypatch):
    config = tmp_path / "experiment.yaml"
    config.write_text("engine:\n  workers: 1\n")
    reference = Learner(make_config(**_groups(OVERRIDES), engine={"backend": "torch"})).run().R

    first = lifelong("run", str(config), *OVERRIDES, "--no-progress", cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    wait_for(registered_checkpoint, 300, "the checkpoint after task 0")
    first.send_signal(signal.SIGINT)  # the user stops it, mid task 1
    out, _ = first.communicate(timeout=120)
    assert first.returncode != 0, out
    run_id = next(Path(".lifelong/ray").glob("lifelong-*")).name.removeprefix("lifelong-")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert client.get_run(run_id).info.status == "FAILED"
    logged = len(client.get_metric_history(run_id, "acc/task_0"))  # rows before the stop
    assert 1 <= logged < 3, out

    second = lifelong("run", "--resume", run_id, "--no-progress", cwd=tmp_path)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out[-3000:]
    assert f"resumes {run_id}" in out and "lifelong ui" in out

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    (resumed,) = [int(m.value) for m in client.get_metric_history(run_id, "fault/resumed_from_task")]
    assert 1 <= resumed <= logged  # from the last checkpoint (a row is logged just before it)
    for j in range(3):
        assert sorted({m.step for m in client.get_metric_history(run_id, f"acc/task_{j}")}) == [0, 1, 2]
    final = [run.data.metrics[f"acc/task_{j}"] for j in range(3)]
    assert final == pytest.approx(reference[-1], abs=1e-9)  # one worker, the same steps


def test_resume_of_an_unknown_run_is_one_line(tmp_path):
    proc = lifelong("run", "--resume", "0123456789abcdef", cwd=tmp_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert out.strip().splitlines()[-1].startswith("lifelong: error: --resume 0123456789abcdef: no such run")


def _groups(overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.from_dotlist(overrides))  # type: ignore[return-value]
