"""`lifelong ui`, as a user runs it in the directory of their runs: a real MLflow UI starts
on 127.0.0.1, the printed links answer, and Ctrl-C (or kill) stops it and its server."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from lifelong.platform.config import build_config
from lifelong.platform.tracking import resolve_uri, start_run
from tests.conftest import free_port
from tests.e2e.user_shell import LIFELONG, lifelong, user_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_lifelong_ui_serves_the_store_and_prints_links_that_answer(tmp_path, stop):
    uri = resolve_uri("sqlite:///mlruns.db", tmp_path)
    run_id = start_run(build_config({"stream": {"dataset": "digits", "scenario": "split", "n_tasks": 3}}),
                       uri, (tmp_path / "mlartifacts").as_uri())
    experiment = MlflowClient(uri).get_run(run_id).info.experiment_id
    port = free_port()
    proc = subprocess.Popen([LIFELONG, "ui", "--port", str(port)], cwd=tmp_path, env=user_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not any("compare runs:" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)  # it exited before printing the links
            lines.append(line)
        out = "".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert f"{base}/#/experiments/{experiment}/runs/{run_id}/model-metrics?workflowType=machine_learning" in out
        assert f"{base}/#/experiments/{experiment}?workflowType=machine_learning" in out
        with urllib.request.urlopen(base + "/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        proc.send_signal(stop)
        code = proc.wait(timeout=30)
    assert code == 0
    with pytest.raises(urllib.error.URLError):  # the server went with it
        time.sleep(0.5)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


def test_lifelong_ui_in_a_directory_without_runs_is_one_line(tmp_path):
    out = lifelong("ui", cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"lifelong: error: no MLflow store at {tmp_path / 'mlruns.db'}: run lifelong run CONFIG.yaml "
        f"here first, or name the store with --uri"]
