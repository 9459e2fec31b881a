"""A strategy from the user's own files reaches a Ray worker that cannot see those files
(another node, another working directory): the driver ships it as runtime_env py_modules,
and the worker imports the shipped copy ahead of an installed package of the same name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lifelong.platform.plugin_shipping import strategy_runtime_env
from lifelong.strategies.registry import RAY_SHIPPED_DIR
from tests.unit.test_plugin_paths import STRATEGY

pytestmark = pytest.mark.slow


def _resolve_elsewhere(name: str) -> tuple[str, str]:
    """In a Ray worker, from a directory without the user's files: where the class came from."""
    import os

    from lifelong.strategies.registry import resolve_strategy

    os.chdir("/")
    cls = resolve_strategy(name)
    return cls.__name__, sys.modules[cls.__module__].__file__


@pytest.mark.parametrize("name", ["examples.mine:Mine", "plugins/my_strategy.py:Mine"])
def test_a_worker_elsewhere_imports_the_shipped_copy(ray_cluster, tmp_path, monkeypatch, name):
    import ray

    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").mkdir()  # the name avalanche-lib also installs
    (tmp_path / "examples" / "__init__.py").write_text("")
    (tmp_path / "examples" / "mine.py").write_text(STRATEGY)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "my_strategy.py").write_text(STRATEGY)

    env = strategy_runtime_env(name)
    assert env is not None and all(uri.startswith("gcs://") for uri in env["py_modules"])
    task = ray.remote(num_cpus=0, runtime_env=env)(_resolve_elsewhere)
    cls_name, origin = ray.get(task.remote(name), timeout=120)
    assert cls_name == "Mine"
    assert RAY_SHIPPED_DIR in Path(origin).parts, origin


def test_nothing_is_shipped_for_built_in_or_installed_strategies(ray_cluster):
    assert strategy_runtime_env("ewc") is None
    assert strategy_runtime_env("lifelong.strategies.ewc:EWC") is None
