"""Worker body and shared pieces for tests/e2e/test_engine_state_sharded.py: one Ray Train
group of DeepSpeed workers trains, captures, restores and resumes at every ZeRO stage."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn
from torch.nn import functional as F

from lifelong.platform.config import EngineConfig, OptimConfig
from lifelong.platform.engine import build_engine
from lifelong.platform.engine_state import capture_training_state, restore_training_state

OPTIMIZERS = {
    "sgd_momentum": OptimConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": OptimConfig(name="adam", lr=0.01, weight_decay=1e-3),
}
STAGES = (0, 1, 2, 3)
K, M = 3, 4  # steps before the capture, steps after the resume
GLOBAL_BATCH = 16
RESET_MASK = torch.tensor([True, False, True, False, True])  # rows of the 5-wide first layer
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)  # odd sizes: ZeRO pads every parameter's partitions
    return nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))


def global_batches() -> Batches:
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(GLOBAL_BATCH, 7, generator=g), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g))
            for _ in range(K + M)]


def shard(data: Batches, rank: int, world: int) -> Batches:
    """This rank's slice of each global batch, as lifelong.streams.batches deals them."""
    return [(x.tensor_split(world)[rank], y.tensor_split(world)[rank]) for x, y in data]


def engine(optim: OptimConfig, stage: Union[int, None], seed: int, world: int = 2) -> Any:
    """A DeepSpeed engine at ``stage`` over the current group, or the plain one (None)."""
    cfg = (EngineConfig(backend="torch") if stage is None
           else EngineConfig(backend="deepspeed", workers=world, zero_stage=stage))
    return build_engine(mlp(seed), optim, cfg, micro_batch_size=GLOBAL_BATCH // world)


def train(eng: Any, data: Batches) -> None:
    for x, y in data:
        eng.backward(F.cross_entropy(eng(x), y))
        eng.step()


def params(eng: Any) -> dict[str, torch.Tensor]:
    return {n: v.detach().to("cpu", copy=True) for n, v in eng.full_params().items()}


def roundtrip(state: dict) -> dict:
    """Through bytes, as a checkpoint file would go; weights_only refuses anything but data."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def resume(state: dict, optim: OptimConfig, stage: Union[int, None], rest: Batches,
           world: int = 2) -> dict[str, torch.Tensor]:
    """A fresh engine (another initialisation) restored from ``state``, then ``rest``."""
    eng = engine(optim, stage, seed=1, world=world)
    restore_training_state(eng, roundtrip(state), sample_input=rest[0][0])
    train(eng, rest)
    return params(eng)


def worker_loop(rank: int, world: int, payload: dict) -> None:
    """Learner-process body. Per optimizer and ZeRO stage: an uninterrupted run of K + M
    steps; a run captured after K steps that then goes on (capture must not disturb it);
    a fresh engine restored from that capture for the last M steps. Then the stage-0
    capture restored into stages 2 and 3, and a plain single-process capture (from the
    test process) restored into stage 3. Along the way, the uninterrupted engine's
    ``reset_optimizer_state`` on some rows. Rank 0 saves everything."""
    torch.set_num_threads(1)
    data = shard(global_batches(), rank, world)
    first, rest = data[:K], data[K:]
    from_plain = torch.load(payload["from_plain"], weights_only=True)
    out: dict = {}
    for name, optim in OPTIMIZERS.items():
        runs: dict = {}
        for stage in STAGES:
            uninterrupted = engine(optim, stage, seed=0)
            train(uninterrupted, data)
            final = params(uninterrupted)
            before = capture_training_state(uninterrupted)["optimizer"]
            uninterrupted.reset_optimizer_state("0.bias", RESET_MASK)  # engine.py, sharded
            reset = {"before": before, "after": capture_training_state(uninterrupted)["optimizer"]}
            captured = engine(optim, stage, seed=0)
            train(captured, first)
            state = capture_training_state(captured)
            train(captured, rest)
            runs[f"zero{stage}"] = {"uninterrupted": final, "captured": params(captured), "reset": reset,
                                    "resumed": resume(state, optim, stage, rest), "state": state}
        start = runs["zero0"]["state"]
        out[name] = {
            "runs": runs,
            "zero0_to": {f"zero{s}": resume(start, optim, s, rest) for s in (2, 3)},
            "plain_to_zero3": resume(from_plain[name], optim, 3, rest),
        }
    if rank == 0:
        torch.save(out, payload["out"])


def run_group(out: Path, from_plain: Path, workers: int = 2) -> dict:
    from lifelong.platform.worker_group import Placement, fit

    fit(worker_loop, {"out": str(out), "from_plain": str(from_plain)},
        Placement(workers, cpus_per_worker=1), max_failures=0)
    return torch.load(out, weights_only=True)
