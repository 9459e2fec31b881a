"""Checks that run before any compute: refuse what cannot run correctly, with one line."""

from __future__ import annotations

from lifelong.platform.config import RunConfig
from lifelong.platform.errors import UnsupportedError
from lifelong.strategies.registry import resolve_strategy
from lifelong.streams.datasets import IDX_SOURCES, find_idx_dir, verify_dir


def check_supported(cfg: RunConfig) -> None:
    """Strategy x engine x ZeRO stage: only combinations proven correct may run."""
    strategy = resolve_strategy(cfg.strategy.name)
    support = strategy.support
    engine = cfg.engine
    if engine.backend == "torch" and engine.workers > 1:
        raise UnsupportedError("engine.backend=torch is the single-worker reference; "
                               "use engine.backend=deepspeed for engine.workers > 1")
    if engine.backend == "torch" and engine.zero_stage != 0:
        raise UnsupportedError("engine.zero_stage applies to engine.backend=deepspeed only")
    if engine.workers > 1 and not support.multi_worker:
        raise UnsupportedError(f"strategy {cfg.strategy.name!r} is not proven correct on "
                               f"{engine.workers} workers ({support.reason}); use engine.workers=1")
    if engine.workers > 1 and cfg.train.batch_size % engine.workers:
        raise UnsupportedError(f"train.batch_size={cfg.train.batch_size} (global) must split evenly "
                               f"across engine.workers={engine.workers}")
    if engine.expert_parallel != 1:
        raise UnsupportedError(
            f"engine.expert_parallel={engine.expert_parallel}: experts split across workers are not "
            "offered yet (DeepSpeed's MoE layer agrees with one worker on gloo only without token "
            "dropping, gate noise or aux loss: benchmarks/expert_parallel.py); use "
            "engine.expert_parallel=1 (every worker holds all experts, proven at ZeRO 0-3)")
    if engine.zero_stage not in support.zero_stages:
        proven = ", ".join(str(s) for s in sorted(support.zero_stages))
        raise UnsupportedError(f"strategy {cfg.strategy.name!r} is not proven correct at ZeRO "
                               f"stage {engine.zero_stage} (proven: {proven}); {support.reason}")


def check_data(cfg: RunConfig) -> None:
    """The data files exist and verify, so a bad file stops the run before Ray starts."""
    source = IDX_SOURCES.get(cfg.stream.dataset)
    if source is not None:
        verify_dir(source, find_idx_dir(source, cfg.stream.data_dir))
