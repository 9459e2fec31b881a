"""Shared fixtures. Ray starts once per session, on 127.0.0.1, only for tests that ask."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from omegaconf import OmegaConf

from lifelong.platform.config import RunConfig, build_config

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# tests/gpu compiles and runs the Triton kernels on a CUDA device (scripts/gpu_check.sh);
# without one it is not collected: tests/unit/test_kernels_triton.py runs the same cases
# under Triton's interpreter on CPU.
collect_ignore = [] if torch.cuda.is_available() else ["gpu"]


def make_config(**groups: Any) -> RunConfig:
    """A validated config from group dicts: make_config(strategy={"name": "ewc"}, ...)."""
    return build_config(OmegaConf.create(groups))


def same(a: Any, b: Any) -> bool:
    """Bitwise equality of nested tensors (dtype included), numbers, strings, lists and dicts:
    strategy states, before and after a checkpoint or on two ranks."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """Embedded Ray for one test module; shut down after it, so modules that start a Ray
    head of their own (cluster submission) never see two clusters on this machine."""
    import ray

    # Ray's workers import test helpers (tests.e2e.*) by name: give them the repo root.
    # Only while this module's Ray starts (its workers inherit it), so no later test, and no
    # command a test runs as a user would, sees it.
    root = str(Path(__file__).resolve().parents[1])
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True,
                 dashboard_host="127.0.0.1", num_cpus=2, configure_logging=False)
    finally:
        mp.undo()
    yield
    ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with its own SQLite store and artifact folder;
    ``stop()`` and ``start()`` again keep the same port and store."""

    def __init__(self, root) -> None:  # type: ignore[no-untyped-def]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = root / "server"
        self.store.mkdir(exist_ok=True)
        self.proc: Any = None

    def start(self, timeout: float = 120) -> None:
        import subprocess
        import sys
        import time
        import urllib.request

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
             "--artifacts-destination", (self.store / "artifacts").as_uri(), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # no job runner: it adds a dozen huey processes, slows start-up and outlives SIGTERM
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.proc.kill()
                    self.proc = None
                    raise RuntimeError("mlflow server did not start")
                time.sleep(0.25)

    def stop(self) -> None:
        import subprocess

        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 with its own SQLite store; yields its URL."""
    server = MlflowServer(tmp_path)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def _module_mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture
def restartable_mlflow_server(_module_mlflow_server) -> Iterator[MlflowServer]:
    """Like ``mlflow_server``, but yields the server: ``.url``, ``.stop()``, ``.start()`` (same
    port and store). One per test module, started as each test begins: tests share its store."""
    if _module_mlflow_server.proc is None:
        _module_mlflow_server.start()
    yield _module_mlflow_server
