"""`lifelong run` with RAY_ADDRESS, typed as a user types it: it joins a head started on
127.0.0.1 as docs/deploy.md starts one (Ray dials a loopback address at this machine's own
IP; the head's GCS listens there too), and a cluster that is not there, or a dashboard URL
where a GCS address belongs, is one line and a non-zero exit within seconds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from lifelong.platform.ray_session import ClusterError
from tests.conftest import free_port
from tests.e2e.ray_head import start_head, stop_session
from tests.e2e.user_shell import LIFELONG, repository_copy, user_env

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SMALL = ("configs/split_digits_ewc.yaml", "train.epochs=1", "stream.n_tasks=2", "--no-progress")


def lifelong_with(env: dict[str, str], *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([LIFELONG, *args], cwd=cwd, env={**user_env(), **env}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def head() -> Iterator[tuple[int, Path]]:
    """A one-node token-auth head on 127.0.0.1; yields its GCS port and its temp dir."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lfjoin"))  # short: Ray's socket paths live under it
    proc, gcs, _ = start_head(temp_dir, BIN)
    try:
        yield gcs, temp_dir
    finally:
        stop_session(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_run_joins_a_head_on_127_0_0_1_and_its_learners_run_there(head, tmp_path):
    gcs, temp_dir = head
    root = repository_copy(tmp_path, "configs")
    out = lifelong_with({"RAY_ADDRESS": f"127.0.0.1:{gcs}", "RAY_AUTH_MODE": "token"}, "run", *SMALL, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr == "" and "ACC" in out.stdout
    # the learner, stream and progress actors were workers of that head, not of a Ray of the run's own
    actor_lines = {line.strip() for log in (temp_dir / "session_latest" / "logs").glob("worker-*.out")
                   for line in log.read_text(errors="replace").splitlines() if line.startswith(":actor_name:")}
    assert {":actor_name:LearnerProcess", ":actor_name:StreamActor"} <= actor_lines, actor_lines


def test_a_cluster_that_is_not_there_is_one_line_within_30_s(tmp_path):
    root = repository_copy(tmp_path, "configs")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.time()
    out = lifelong_with({"RAY_ADDRESS": address}, "run", *SMALL, cwd=root, timeout=60)
    elapsed = time.time() - t0
    assert out.returncode == ClusterError.exit_code == 5
    (line,) = out.stderr.splitlines()
    assert out.stdout == "" and line.startswith(f"lifelong: error: RAY_ADDRESS={address}: no Ray cluster answers")
    assert "ray start --head" in line and elapsed < 30, elapsed


def test_a_dashboard_url_as_ray_address_is_one_line(tmp_path):
    root = repository_copy(tmp_path, "configs")
    out = lifelong_with({"RAY_ADDRESS": "http://127.0.0.1:8265"}, "run", *SMALL, cwd=root, timeout=60)
    assert out.returncode == 5 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("lifelong: error: RAY_ADDRESS=http://127.0.0.1:8265 is a dashboard "
                           "(job submission) address"), line
