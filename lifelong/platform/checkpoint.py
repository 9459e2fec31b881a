"""Checkpoints at task boundaries: everything a run needs to go on as if never stopped.

One file, ``state.pt``, written by rank 0 after a collective capture:
- ``engine``: full fp32 parameters and optimizer state by parameter name
  (``engine_state.py``), so a run resumes at any ZeRO stage and on any number of workers;
- ``strategy``: the strategy's ``state_dict()`` (the same on every rank; rank 0's is kept);
- the stream position (``next_task``), the accuracy matrix so far, online accuracies,
  the plasticity probes so far (rank 0's, for the plot), step counters, RNG;
- a fingerprint of the config groups that define the experiment, so a checkpoint is never
  loaded into a different one.

Written to a temporary name and renamed (a crash never leaves half a file under the real
name); read with ``torch.load(weights_only=True)``, so loading never runs pickled code.
``checkpoint_store.py`` keeps them per run; restarts (``engine.max_failures``) and
``lifelong run --resume RUN_ID`` start from the latest one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from lifelong.platform.config import RunConfig
from lifelong.platform.engine_state import capture_training_state, restore_training_state
from lifelong.platform.errors import CheckpointError, first_line

if TYPE_CHECKING:
    from lifelong.platform.learner import Learner

FILE = "state.pt"
FORMAT = 2
EXPERIMENT_GROUPS = ("stream", "model", "strategy", "optim", "train", "seed")  # not engine, tracking


def fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The config groups a resumed run must share with the one that wrote the checkpoint."""
    full = OmegaConf.to_container(OmegaConf.structured(cfg))
    assert isinstance(full, dict)
    stream = dict(full["stream"])
    for transport in ("data_dir", "chunk_batches", "prefetch"):  # where/how rows travel, not which
        stream.pop(transport)
    return {**{g: full[g] for g in EXPERIMENT_GROUPS}, "stream": stream}


def capture(learner: "Learner") -> dict[str, Any]:
    """Collective: every rank calls it at the same boundary; the result is rank 0's to write."""
    r = learner.result
    return {"format": FORMAT, "fingerprint": fingerprint(learner.cfg), "next_task": len(r.R),
            "R": [list(row) for row in r.R], "init": list(r.init), "steps": r.steps,
            "online": list(r.online), "probes": list(r.probes), "task_starts": list(r.task_starts),
            "engine": capture_training_state(learner.engine),
            "strategy": detached(learner.strategy.state_dict()),  # may be written in the background
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}


def detached(value: Any) -> Any:
    """A copy of nested state whose tensors no later in-place edit can reach."""
    if torch.is_tensor(value):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(detached(v) for v in value)
    return value


def write(state: dict[str, Any], directory: Path) -> Path:
    """Atomically: the file appears under its name complete, or not at all."""
    directory.mkdir(parents=True, exist_ok=True)
    final, partial = directory / FILE, directory / f".{FILE}.partial"
    torch.save(state, partial)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, final)
    return final


def read(path: Path, cfg: RunConfig) -> dict[str, Any]:
    """Load and check a checkpoint for ``cfg``; one-line ``CheckpointError`` otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or a pickle that names code
        raise CheckpointError(f"checkpoint {path} cannot be read ({first_line(err)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a lifelong checkpoint (format {FORMAT})")
    mine = fingerprint(cfg)
    for group, value in state["fingerprint"].items():
        if mine.get(group) != value:
            raise CheckpointError(f"checkpoint {path} was written by a run with another `{group}` "
                                  f"config; resume with the run's own config")
    return state


def restore(learner: "Learner", state: dict[str, Any]) -> None:
    """Collective: put a checkpoint into a freshly built learner (same experiment, any
    engine, stage or world size); ``learner.run()`` then continues at ``next_task``."""
    sample = torch.zeros(1, learner.spec.input_dim)
    try:
        restore_training_state(learner.engine, state["engine"], sample)
    except ValueError as err:
        raise CheckpointError(f"checkpoint does not fit this model: {first_line(err)}") from None
    learner.strategy.load_state_dict(state["strategy"])
    r = learner.result
    r.R, r.init, r.steps = [list(row) for row in state["R"]], list(state["init"]), state["steps"]
    r.online, r.task_starts = list(state["online"]), list(state["task_starts"])
    r.probes = [(int(step), dict(values)) for step, values in state["probes"]]
    assert len(r.R) == state["next_task"]
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(_as_tuple(state["rng"]["python"]))


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` wants tuples all the way down; a round trip may give lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
