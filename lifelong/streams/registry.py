"""Stream names -> builders, and the checks a stream config must pass before compute."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lifelong.platform.errors import ConfigError
from lifelong.streams import scenarios
from lifelong.streams.datasets import load_dataset
from lifelong.streams.scenarios import TaskStream

if TYPE_CHECKING:
    from lifelong.platform.config import StreamConfig

DATASETS = {"mnist": 10, "fashion_mnist": 10, "digits": 10}  # name -> number of classes
SCENARIOS = ("permuted", "split")


def check_stream(cfg: "StreamConfig") -> None:
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"stream.dataset: unknown data set {cfg.dataset!r}; "
                          f"known: {', '.join(DATASETS)}")
    if cfg.scenario not in SCENARIOS:
        raise ConfigError(f"stream.scenario: unknown scenario {cfg.scenario!r}; "
                          f"known: {', '.join(SCENARIOS)}")
    if cfg.scenario == "split":
        if cfg.classes_per_task < 1:
            raise ConfigError("stream.classes_per_task: must be >= 1")
        needed = cfg.n_tasks * cfg.classes_per_task
        if needed > DATASETS[cfg.dataset]:
            raise ConfigError(f"stream.n_tasks: {cfg.n_tasks} tasks x {cfg.classes_per_task} "
                              f"classes needs {needed} classes; {cfg.dataset} has "
                              f"{DATASETS[cfg.dataset]}")
    for key in ("train_samples_per_task", "test_samples_per_task"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"stream.{key}: must be >= 1 or null, got {value}")


def build_stream(cfg: "StreamConfig", seed: int) -> TaskStream:
    """Load the (verified) data set and cut it into the configured task sequence."""
    check_stream(cfg)
    data = load_dataset(cfg.dataset, cfg.data_dir)
    sizes = dict(train_samples=cfg.train_samples_per_task, test_samples=cfg.test_samples_per_task)
    if cfg.scenario == "permuted":
        return scenarios.permuted(data, cfg.n_tasks, cfg.setting, seed, **sizes)
    return scenarios.split(data, cfg.n_tasks, cfg.classes_per_task, cfg.setting, seed, **sizes)
