"""Shared fixtures. Ray starts once per session, on 127.0.0.1, only for tests that ask."""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest
from omegaconf import OmegaConf

from lifelong.platform.config import RunConfig, build_config

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def make_config(**groups: Any) -> RunConfig:
    """A validated config from group dicts: make_config(strategy={"name": "ewc"}, ...)."""
    return build_config(OmegaConf.create(groups))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True,
             dashboard_host="127.0.0.1", num_cpus=2, configure_logging=False)
    yield
    ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 with its own SQLite store; yields its URL."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", (store / "artifacts").as_uri(), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("mlflow server did not start")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
