"""Runs the same seeded stream on 1 plain worker (in-process) and on N DeepSpeed workers
(a real Ray Train worker group) for several strategies, returning what each produced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lifelong.platform.learner import Learner
from tests.conftest import make_config

STREAM = {"dataset": "digits", "scenario": "permuted", "n_tasks": 3, "setting": "domain"}
STRATEGIES = {
    "naive": {"name": "naive"},
    "joint": {"name": "joint"},
    "replay": {"name": "replay", "buffer_size": 200},
    "ewc": {"name": "ewc", "lam": 100.0, "fisher_samples": 300},
    # Plasticity strategies, tuned to act often in ~270 steps (units replaced every step or two).
    "cbp": {"name": "cbp", "replacement_rate": 0.01, "maturity_threshold": 20},
    "cbp_conv": {"name": "cbp", "replacement_rate": 0.01, "maturity_threshold": 20},
    "redo": {"name": "redo", "every": 25, "tau": 0.1},
    "l2": {"name": "l2", "lam": 0.01},
    "shrink_perturb": {"name": "shrink_perturb", "shrink": 1e-3, "noise_std": 1e-3},
}
MODELS = {"cbp_conv": {"hidden": [32], "conv": [8, 8]}}  # default: an MLP


def config(name: str, engine: dict) -> Any:
    return make_config(stream=STREAM, model=MODELS.get(name, {"hidden": [64, 64]}),
                       strategy=STRATEGIES[name],
                       optim={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                       train={"epochs": 2, "batch_size": 32, "eval_batch_size": 128},
                       engine=engine, seed=0)


def outcome(learner: Learner) -> dict:
    result = learner.run()
    out: dict = {"R": result.R, "optimizer_state_bytes": result.optimizer_state_bytes}
    fisher = getattr(learner.strategy, "fisher_sum", None)
    if fisher:
        out["fisher"] = {k: v.detach().cpu() for k, v in fisher.items()}
    for counter in ("replaced", "recycled"):  # unit-level strategies: how often they acted
        if hasattr(learner.strategy, counter):
            out[counter] = dict(getattr(learner.strategy, counter))
    return out


def plain(name: str) -> dict:
    return outcome(Learner(config(name, {"backend": "torch"})))


def sharded_loop(rank: int, world: int, payload: dict) -> None:
    """Learner-process body: every strategy in turn on this worker group."""
    torch.set_num_threads(1)
    results = {}
    for name in payload["strategies"]:
        engine = {"backend": "deepspeed", "workers": world, "zero_stage": payload["stage"]}
        results[name] = outcome(Learner(config(name, engine), rank, world))
    if rank == 0:
        torch.save(results, payload["out"])


def sharded(stage: int, names: list[str], out: Path, workers: int = 2) -> dict:
    from lifelong.platform.worker_group import Placement, fit

    fit(sharded_loop, {"stage": stage, "strategies": names, "out": str(out)},
        Placement(workers, cpus_per_worker=1), max_failures=0)
    return torch.load(out, weights_only=True)


if __name__ == "__main__":  # quick look: python -m tests.e2e.sharding_harness STAGE
    import sys

    import ray

    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True,
             dashboard_host="127.0.0.1", num_cpus=2, configure_logging=False)
    stage = int(sys.argv[1])
    got = sharded(stage, list(STRATEGIES), Path(f"/tmp/sharded{stage}.pt").resolve())
    for name in STRATEGIES:
        ref = plain(name)
        diff = max(abs(a - b) for ra, rb in zip(ref["R"], got[name]["R"]) for a, b in zip(ra, rb))
        line = f"stage {stage} {name:7s} max|dR|={diff:.4f} final={[round(a, 3) for a in got[name]['R'][-1]]}"
        for counter in ("replaced", "recycled"):
            if counter in ref:
                line += f" {counter} {ref[counter]} vs {got[name][counter]}"
        if "fisher" in ref:
            rel = max(float((ref["fisher"][k] - got[name]["fisher"][k]).norm() / ref["fisher"][k].norm())
                      for k in ref["fisher"])
            line += f" fisher rel err={rel:.2e}"
        print(line, flush=True)
    print(json.dumps({"ok": True}))
