"""The console of `lifelong run` as a new user sees it, typed as they type it: lifelong's
own lines only, everything of Ray's, DeepSpeed's and MLflow's in `.lifelong/logs/RUN_ID.log`
(an artifact of the run), a failure as one line, `-v` to see it all live. Two runs started
at once on one machine (each with a local Ray of its own) stand for the default run: both
must succeed with consoles as clean as one run's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.user_shell import LIFELONG, lifelong, repository_copy, user_env

pytestmark = pytest.mark.slow
RUN = ("run", "configs/split_digits_ewc.yaml", "train.epochs=1")
NOT_OURS = ("Checkpoint successfully", "Reporting training result", "core_worker", "PreemptionWatcher",
            "Token authentication", "built successfully", "mlflow.store.db.utils", "INFO", "(pid=",
            "Traceback", "Error", "error", "WARNING")
OUR_LINES = [re.compile(p) for p in (
    r"lifelong run [0-9a-f]{32} · strategy ewc · 1 worker\(s\), deepspeed ZeRO-0$",  # header
    r"(tasks|task \d+) +━+ \d+/\d+ ",                                                # progress
    r"accuracy matrix R\[i\]\[j\]: ", r"[┏┃┡│└]",                                     # summary
    r"ACC \d\.\d{4}  BWT [-+]\d\.\d{4}  FWT [-+]\d\.\d{4}  FORGETTING [-+]\d\.\d{4}$",
    r"run [0-9a-f]{32} finished in \d+\.\ds\.$",
    r"In the MLflow UI \(start it with: lifelong ui\):$", r"  (this run|compare runs): +http://127\.0\.0\.1:5000/")]


def run_id_of(stdout: str) -> str:
    return re.search(r"^run ([0-9a-f]{32}) finished", stdout, re.M).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[tuple[subprocess.CompletedProcess, Path]]:
    """Two default runs started together, each from its own directory."""
    roots = [repository_copy(tmp_path_factory.mktemp(f"run{i}"), "configs") for i in range(2)]
    procs = [subprocess.Popen([LIFELONG, *RUN], cwd=root, env=user_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for root in roots]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return list(zip(done, roots))


def test_two_runs_at_once_both_succeed_and_show_only_lifelongs_own_lines(two_runs):
    for out, _ in two_runs:
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stderr == ""
        console = out.stdout
        assert not [s for s in NOT_OURS if s in console], console
        strangers = [line for line in console.splitlines() if not any(p.match(line) for p in OUR_LINES)]
        assert strangers == [], console
        assert sum(line.startswith("│") for line in console.splitlines()) == 4  # init + 3 tasks


def test_third_party_output_is_in_the_runs_log_file_and_artifact(two_runs):
    out, root = two_runs[0]
    run_id = run_id_of(out.stdout)
    log = root / ".lifelong" / "logs" / f"{run_id}.log"
    assert log.is_file() and "mlflow.store.db.utils" in log.read_text()  # what the console did not show
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    assert [a.path for a in client.list_artifacts(run_id, "logs")] == [f"logs/{run_id}.log"]


def test_a_failing_run_is_one_error_line(tmp_path):
    root = repository_copy(tmp_path, "configs")
    out = lifelong(*RUN, "optim.lr=1e6", "strategy.name=naive", "stream.n_tasks=2", cwd=root)
    assert out.returncode != 0
    (line,) = out.stderr.splitlines()
    assert line.startswith("lifelong: error: training diverged (loss=nan) on task 0"), line
    assert not [s for s in NOT_OURS if s in out.stdout], out.stdout
    (log,) = (root / ".lifelong" / "logs").iterdir()
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    assert client.get_run(log.stem).info.status == "FAILED"


def test_verbose_shows_ray_and_mlflow_output_live(tmp_path):
    root = repository_copy(tmp_path, "configs")
    out = lifelong(*RUN, "stream.n_tasks=1", "-v", cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Token authentication is enabled" in out.stderr  # Ray's, from the driver process
    assert "Creating initial MLflow database tables" in out.stderr  # MLflow's, a fresh store
    log = root / ".lifelong" / "logs" / f"{run_id_of(out.stdout)}.log"
    assert "mlflow.store.db.utils" in log.read_text()  # and kept in the file all the same
