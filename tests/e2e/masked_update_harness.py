"""Worker body for tests/e2e/test_masked_updates_sharded.py: per optimizer and ZeRO stage,
train dense, set update masks and a pull, train on, and checkpoint/resume mid-way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lifelong.platform.config import OptimConfig
from lifelong.platform.engine_state import capture_training_state, restore_training_state
from tests.e2e.engine_state_harness import STAGES, engine, global_batches, params, roundtrip, shard, train

OPTIMIZERS = {
    "sgd_momentum": OptimConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=0.01),
    "adam": OptimConfig(name="adam", lr=0.01, weight_decay=0.01),
    "adamw": OptimConfig(name="adamw", lr=0.01, weight_decay=0.1),
}
K = 2  # dense steps (so that state is non-zero); the other global batches are masked steps
RESUME_AT = 2  # masked steps before the capture that a fresh engine resumes from


def masks() -> dict[str, torch.Tensor]:
    """On the 7-5-3 MLP (odd sizes: ZeRO splits parameters across ranks): units 0 and 3
    frozen and unit 2 at half speed; scattered elements of the output layer frozen; its
    bias frozen whole. No two slices a rank could confuse hold the same mask values."""
    return {"0.weight": torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0]),
            "0.bias": torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]),
            "2.weight": (torch.arange(15).view(3, 5) % 3 != 0).float(),
            "2.bias": torch.tensor(0.0)}


def pull() -> tuple[float, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return 2.0, torch.rand(3, 5, generator=g), torch.randn(3, 5, generator=g)


def apply_rules(eng: Any) -> None:
    for name, mask in masks().items():
        eng.update_mask(name, mask)
    eng.set_pull("2.weight", *pull())


def optimizer_state(eng: Any) -> dict:
    return capture_training_state(eng)["optimizer"]


def masked_run(optim: OptimConfig, stage: Any, data: list, world: int) -> dict:
    """K dense steps, the rules, masked steps over the rest of ``data``; the state before and after the masked ones;
    and a resume from a capture after RESUME_AT masked steps."""
    eng = engine(optim, stage, seed=0, world=world)
    train(eng, data[:K])
    before = {"params": params(eng), "optimizer": optimizer_state(eng)}
    apply_rules(eng)
    train(eng, data[K:K + RESUME_AT])
    state = capture_training_state(eng)
    train(eng, data[K + RESUME_AT:])
    after = {"params": params(eng), "optimizer": optimizer_state(eng)}
    fresh = engine(optim, stage, seed=1, world=world)
    fresh.set_pull("2.weight", *pull())  # a pull is the strategy's to restore (EWC's state)
    restore_training_state(fresh, roundtrip(state), sample_input=data[K + RESUME_AT][0])
    train(fresh, data[K + RESUME_AT:])
    return {"before": before, "after": after, "resumed": params(fresh),
            "saved_masks": state["update_masks"]}


def worker_loop(rank: int, world: int, payload: dict) -> None:
    torch.set_num_threads(1)
    data = shard(global_batches(), rank, world)
    out = {name: {f"zero{stage}": masked_run(optim, stage, data, world) for stage in STAGES}
           for name, optim in OPTIMIZERS.items()}
    if rank == 0:
        torch.save(out, payload["out"])


def plain_runs() -> dict:
    """The unsharded reference: the plain engine over whole batches, same rules."""
    return {name: masked_run(optim, None, global_batches(), 1) for name, optim in OPTIMIZERS.items()}


def run_group(out: Path, workers: int) -> dict:
    from lifelong.platform.worker_group import Placement, fit

    fit(worker_loop, {"out": str(out)}, Placement(workers, cpus_per_worker=1), max_failures=0)
    return torch.load(out, weights_only=True)
