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
