"""Checkpoint and resume in-process: a run stopped at a task boundary and resumed from its
checkpoint (written, read back with weights_only=True, into a freshly built learner) ends
with exactly the accuracy matrix of a run that never stopped. Bad checkpoints are one line."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lifelong.platform import checkpoint
from lifelong.platform.errors import CheckpointError
from lifelong.platform.learner import Learner
from lifelong.streams.registry import build_stream
from tests.conftest import make_config

STRATEGIES = {"naive": {"name": "naive"}, "joint": {"name": "joint"},
              "replay": {"name": "replay", "buffer_size": 40},
              "ewc": {"name": "ewc", "lam": 50.0, "fisher_samples": 64},
              "cbp": {"name": "cbp", "replacement_rate": 0.02, "maturity_threshold": 4},
              "redo": {"name": "redo", "every": 5, "tau": 0.5},
              "shrink_perturb": {"name": "shrink_perturb", "shrink": 1e-3, "noise_std": 1e-3},
              "gateon": {"name": "gateon"}, "gateon_p": {"name": "gateon", "mode": "p"},
              # switches at steps 12 and 24 (after the checkpoint): only a restored detector,
              # confident and with its loss history, finds them again
              "gateon_detect": {"name": "gateon", "context": "detect", "contexts": 4, "window": 3,
                                "confidence_rate": 0.3, "ratio": 1.3, "eta": 0.05}}


def config(strategy: dict, optim: str = "sgd") -> Any:
    return make_config(stream={"dataset": "digits", "scenario": "split", "n_tasks": 3,
                               "setting": "task", "train_samples_per_task": 96},
                       model={"hidden": [32]}, strategy=strategy,
                       optim={"name": optim, "lr": 0.05 if optim == "sgd" else 0.01, "momentum": 0.9},
                       train={"epochs": 2, "batch_size": 16}, engine={"backend": "torch"}, seed=1)


@pytest.fixture(scope="module")
def stream():
    return build_stream(config({"name": "naive"}).stream, seed=1)


class Stop(Exception):
    pass


def stopped_after(cfg: Any, stream: Any, task: int) -> dict:
    """Train until the boundary after ``task``, capture there, then 'crash'."""
    learner, saved = Learner(cfg, stream=stream), {}

    def at_boundary(current: Learner) -> None:
        if len(current.result.R) == task + 1:
            saved["state"] = checkpoint.capture(current)
            raise Stop

    learner.at_boundary = at_boundary
    with pytest.raises(Stop):
        learner.run()
    return saved["state"]


@pytest.mark.parametrize("optim", ["sgd", "adam"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_resumed_run_ends_with_the_uninterrupted_matrix(name, optim, stream, tmp_path):
    cfg = config(STRATEGIES[name], optim)
    uninterrupted = Learner(cfg, stream=stream).run()
    path = checkpoint.write(stopped_after(cfg, stream, task=0), tmp_path)
    state = checkpoint.read(path, cfg)
    resumed = Learner(cfg, stream=stream)
    checkpoint.restore(resumed, state)
    assert resumed.result.R == uninterrupted.R[:1]
    result = resumed.run()
    assert result.R == uninterrupted.R  # exactly: same steps on the same rows from the same state
    assert result.init == uninterrupted.init and result.steps == uninterrupted.steps
    assert result.online == uninterrupted.online and result.probes == uninterrupted.probes


def test_checkpoint_is_written_atomically_and_loads_weights_only(stream, tmp_path):
    cfg = config(STRATEGIES["replay"])
    path = checkpoint.write(stopped_after(cfg, stream, task=1), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.FILE]  # no partial left over
    state = torch.load(path, weights_only=True)
    assert state["next_task"] == 2 and len(state["R"]) == 2


def test_truncated_checkpoint_is_one_line(stream, tmp_path):
    cfg = config(STRATEGIES["naive"])
    path = checkpoint.write(stopped_after(cfg, stream, task=0), tmp_path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cannot be read") as info:
        checkpoint.read(path, cfg)
    assert "\n" not in str(info.value) and info.value.exit_code == 3


def test_a_pickle_that_names_code_is_refused(tmp_path):
    path = tmp_path / checkpoint.FILE
    torch.save({"format": 1, "payload": Stop()}, path)  # arbitrary objects: weights_only refuses
    with pytest.raises(CheckpointError, match="cannot be read"):
        checkpoint.read(path, config(STRATEGIES["naive"]))


def test_a_checkpoint_of_another_experiment_is_refused(stream, tmp_path):
    path = checkpoint.write(stopped_after(config(STRATEGIES["naive"]), stream, task=0), tmp_path)
    with pytest.raises(CheckpointError, match="another `strategy` config"):
        checkpoint.read(path, config(STRATEGIES["ewc"]))
    moved = make_config(**{**_groups(config(STRATEGIES["naive"])), "engine": {"workers": 2, "zero_stage": 2}})
    assert checkpoint.read(path, moved)["next_task"] == 1  # another engine is fine: same experiment


def _groups(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg))
