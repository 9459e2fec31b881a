"""`lifelong submit` against a real Ray head started on 127.0.0.1 by this module.

The head gets its own temp dir (so nothing is written to /tmp/ray, ray_current_cluster
included), non-default ports for everything, and its own session; it is stopped by
signalling only the processes of that session, never with `ray stop`, which would stop
every Ray on this machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from mlflow.tracking import MlflowClient

from lifelong.platform import submit as submit_mod
from lifelong.platform.cli import main
from lifelong.platform.errors import SubmitError
from tests.conftest import free_port
from tests.e2e.ray_head import start_head, stop_session as _stop_session

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _token_header() -> dict[str, str]:
    """The header for the local token (~/.ray/auth_token etc.), created first if missing,
    as `ray.init()` and the docs' `ray get-auth-token --generate` would."""
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], check=True,
                       stdout=subprocess.DEVNULL)
        loader.reset_cache()
    return dict(loader.get_token_for_http_header(ignore_auth_mode=True))


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A one-node Ray cluster with token auth and 2 CPUs; yields its dashboard URL."""
    header = _token_header()
    # short on purpose: Ray's unix socket paths under it must stay below 108 characters
    temp_dir = tempfile.mkdtemp(prefix="lfray")
    proc, _, dash = start_head(Path(temp_dir), BIN, dashboard=True)
    address = f"http://127.0.0.1:{dash}"
    mp = pytest.MonkeyPatch()
    try:
        _wait_for_jobs_api(address, header, proc, temp_dir)
        mp.setenv("RAY_AUTH_MODE", "token")  # what `lifelong submit` needs to send the token
        mp.delenv("RAY_ADDRESS", raising=False)
        yield address
    finally:
        mp.undo()
        _stop_session(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_jobs_api(address: str, header: dict[str, str], proc: subprocess.Popen,
                       temp_dir: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            request = urllib.request.Request(f"{address}/api/jobs/", headers=header)
            with urllib.request.urlopen(request, timeout=5) as response:
                json.load(response)
                return
        except (OSError, ValueError):
            if proc.poll() is not None or time.time() > deadline:
                tail = (Path(temp_dir) / "head.log").read_text()[-2000:]
                raise RuntimeError(f"the Ray head did not come up:\n{tail}")
            time.sleep(0.5)


class _FakeClient:
    """Stands in for JobSubmissionClient: records what would be submitted."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    def submit_job(self, **job: Any) -> str:
        self.jobs.append(job)
        return "raysubmit_fake"

    def get_job_status(self, job_id: str) -> str:
        return "PENDING"


def test_the_job_runs_this_checkout_and_tracks_to_this_machine(tmp_path, monkeypatch, capsys):
    """What is sent, without a cluster: a relative store and the default artifact folder
    become absolute paths under the uploaded directory; LIFELONG_DATA goes along."""
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs/split_digits_ewc.yaml", tmp_path / "configs/exp.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIFELONG_DATA", "/data/lifelong")
    fake = _FakeClient()
    monkeypatch.setattr(submit_mod, "_client", lambda address: fake)

    status = submit_mod.submit("configs/exp.yaml", ["train.epochs=1"], "http://10.1.2.3:8265",
                               follow=False)
    (job,) = fake.jobs
    assert status == "PENDING"
    assert job["entrypoint"] == (
        f"python -m lifelong run configs/exp.yaml train.epochs=1 "
        f"tracking.uri=sqlite:///{tmp_path}/mlruns.db "
        f"tracking.artifact_location={(tmp_path / 'mlartifacts').as_uri()} --no-progress")
    env = job["runtime_env"]
    assert env["working_dir"] == str(tmp_path) and env["env_vars"] == {"LIFELONG_DATA": "/data/lifelong"}
    assert {".venv", ".git", "mlruns.db", "mlartifacts", ".lifelong", "__pycache__"} <= set(env["excludes"])
    err = capsys.readouterr().err
    assert "warning: tracking.uri=sqlite:///" in err and "only if that cluster is this machine" in err


def test_a_bad_override_is_refused_before_contacting_the_cluster(monkeypatch, capsys):
    def no_cluster(address: str) -> None:
        raise AssertionError("contacted the cluster")

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(submit_mod, "_client", no_cluster)
    t0 = time.time()
    code = main(["submit", "configs/split_digits_ewc.yaml", "train.epochs=abc",
                 "--address", "http://127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("lifelong: error: train.epochs"), err
    assert time.time() - t0 < 30


def test_an_unreachable_cluster_is_one_line(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = main(["submit", "configs/split_digits_ewc.yaml", "train.epochs=1", "--address", address])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == SubmitError.exit_code == 5
    assert err == [err[0]] and err[0].startswith(f"lifelong: error: cannot reach the Ray cluster at {address}"), err


def test_submit_runs_the_experiment_on_the_cluster(ray_head, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = main(["submit", "configs/split_digits_ewc.yaml", "train.epochs=1",
                 f"tracking.uri=sqlite:///{tmp_path}/mlruns.db",
                 f"tracking.artifact_location={tmp_path}/mlartifacts", "--address", ray_head])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert "accuracy matrix" in out  # the job's own output, streamed here
    assert "SUCCEEDED" in err.strip().splitlines()[-1]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("split-digits").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "cl/acc")] == [0, 1, 2]
    matrix = json.loads((tmp_path / "mlartifacts" / run.info.run_id / "artifacts" /
                         "accuracy_matrix.json").read_text())
    assert len(matrix["R"]) == 3
