"""Runs the same seeded stream on 1 plain worker (in-process) and on N DeepSpeed workers
(a real Ray Train worker group) for several strategies, returning what each produced.

GateON, MoE and hypernetwork rows also return the strategy's state (GateON: availability,
committed masks, context detector, switches; MoE: frozen experts, routing tables, usage,
task-free gates, task inference; hnet: trained tasks, targets, task inference) from *every*
rank, and each of ``RESUMED`` is checkpointed after task ``RESUME_AFTER`` on the workers,
resumed from that file into a fresh learner group, and run to the end again; the files stay
in the work directory for a resume elsewhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lifelong.platform import checkpoint
from lifelong.platform.learner import Learner
from lifelong.strategies.gateon import GateON
from lifelong.strategies.hnet import Hnet
from lifelong.strategies.moe import MoE
from tests.conftest import make_config

HNET = {"name": "hnet", "embedding_dim": 8, "chunk_dim": 4, "hidden": [16], "chunk_size": 500, "beta": 0.1}
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
    # GateON at the paper's rates (eta = 0.01): 10-20% of the units go unavailable here.
    "gateon_n": {"name": "gateon", "mode": "n"},
    "gateon_p": {"name": "gateon", "mode": "p"},
    # Detection tuned to 42-step tasks: confident after ~10 steps, window 5, and a switch only
    # on a loss 1.3x the recent mean, which on this stream is a new permutation (~2.3 against
    # ~1.6): each new task is tried in the known contexts, refused, and opens its own.
    "gateon_detect": {"name": "gateon", "mode": "n", "context": "detect", "contexts": 4,
                      "window": 5, "confidence_rate": 0.2, "ratio": 1.3},
    # MoE with small pools (6 experts, 2 fresh a task, all 6 in use by task 2), noisy top-2,
    # one balance loss each; task-routed on Split digits with task ids, and task-free on the
    # class-incremental split, where the autoencoder gates must infer each test row's task.
    "moe_task": {"name": "moe", "routing": "task", "experts": 6, "per_task": 2, "k": 2, "freeze": 1,
                 "noise": 1.0, "balance": 0.01, "balance_kind": "switch", "z_loss": 0.001},
    "moe_free": {"name": "moe", "routing": "free", "experts": 6, "per_task": 2, "k": 2, "freeze": 2,
                 "noise": 1.0, "balance": 0.01, "balance_kind": "cv2", "z_loss": 0.001, "gate_rank": 10},
    # Hypernetworks with a small generator (18 chunks of 500 for the 64-64 MLP): task-conditioned
    # on Split digits with task ids and a set of chunk embeddings per task, regularising every
    # past task; and on the class-incremental split with one past task drawn per step and each
    # test row's task inferred (HNET+ENT).
    "hnet_task": {**HNET, "inference": "task", "per_task_chunks": True},
    "hnet_ent": {**HNET, "inference": "entropy", "reg_tasks": 1, "per_task_chunks": False, "chunk_std": 1.0},
}
MODELS = {"cbp_conv": {"hidden": [32], "conv": [8, 8]}}  # default: an MLP
SPLIT = {"dataset": "digits", "scenario": "split", "n_tasks": 3, "classes_per_task": 3}  # ~400 rows a task
STREAMS = {"moe_task": {**SPLIT, "setting": "task"}, "moe_free": {**SPLIT, "setting": "class"},
           "hnet_task": {**SPLIT, "setting": "task"}, "hnet_ent": {**SPLIT, "setting": "class"}}  # default: STREAM
# GateON's gated, unit-norm hidden layers are chaotic under SGD with momentum at lr 0.05 on
# this stream: 1-ulp differences (1 vs 2 BLAS threads, on the plain worker alone) grow about
# 10% a step, to R differences of 0.05-0.35 by the end, so no sharding could match it. Adam
# steps stay bounded; its eps is raised from 1e-8 so that, after each optimizer restart at a
# context switch, a unit whose gate just opened does not take an lr-sized step from a
# rounding-sized gradient (with 1e-8 one such unit put plain and sharded 0.06 apart in A).
# Measured here: parameters within 1e-6 of the plain run's, R equal. One epoch (42 steps a
# task) is enough for GateON to act, and keeps the suite short.
ADAM = {"name": "adam", "lr": 0.01, "eps": 1e-3}
OPTIMS = {"gateon_n": ADAM, "gateon_p": ADAM, "gateon_detect": ADAM,
          "moe_task": ADAM, "moe_free": ADAM, "hnet_task": ADAM, "hnet_ent": ADAM}  # default: SGD, momentum
EPOCHS = {"gateon_n": 1, "gateon_p": 1, "gateon_detect": 1, "moe_task": 1, "moe_free": 1,
          "hnet_task": 1, "hnet_ent": 1}  # default: 2
# Checkpointed after task 1: GateON with two contexts and one switch; MoE with experts frozen
# and (free) two contexts' gates fitted; HNET+ENT with two tasks trained, one target snapshotted.
RESUMED, RESUME_AFTER = ("gateon_detect", "moe_free", "hnet_ent"), 1
CHECKPOINT_DIR = "checkpoint-{name}-{stage}"  # under the work directory: RESUMED's, from the workers
STATES = ("gateon", "moe", "hnet")  # outcome keys that every rank returns


def config(name: str, engine: dict) -> Any:
    return make_config(stream=STREAMS.get(name, STREAM), model=MODELS.get(name, {"hidden": [64, 64]}),
                       strategy=STRATEGIES[name],
                       optim=OPTIMS.get(name, {"name": "sgd", "lr": 0.05, "momentum": 0.9}),
                       train={"epochs": EPOCHS.get(name, 2), "batch_size": 32, "eval_batch_size": 128},
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
    if isinstance(learner.strategy, GateON):
        out["gateon"] = gateon_state(learner)
    if isinstance(learner.strategy, MoE):
        out["moe"] = moe_state(learner)
    if isinstance(learner.strategy, Hnet):
        out["hnet"] = hnet_state(learner)
    return out


def gateon_state(learner: Learner) -> dict:
    """What GateON decided: availability (running and committed), the detector, switches and
    eval-chosen contexts (all in its checkpoint state), and the update masks in force."""
    strategy = learner.strategy
    assert isinstance(strategy, GateON)
    return {"available_fraction": strategy.available_fraction(),
            "state": checkpoint.detached(strategy.state_dict()),
            "masks": {k: v.clone() for k, v in learner.ctx.update_masks().items()}}


def moe_state(learner: Learner) -> dict:
    """What MoE decided: its checkpoint state (frozen experts, routable and owned tables,
    usage counts, trained contexts, task inference, gates) and the update masks in force."""
    strategy = learner.strategy
    assert isinstance(strategy, MoE)
    return {"state": checkpoint.detached(strategy.state_dict()),
            "masks": {k: v.clone() for k, v in learner.ctx.update_masks().items()}}


def hnet_state(learner: Learner) -> dict:
    """What the hypernetwork strategy kept: its checkpoint state (trained tasks, the targets
    h(e_t', Theta*) snapshotted at the last task start, step, task inference) and the masks."""
    strategy = learner.strategy
    assert isinstance(strategy, Hnet)
    return {"state": checkpoint.detached(strategy.state_dict()),
            "masks": {k: v.clone() for k, v in learner.ctx.update_masks().items()}}


def plain(name: str) -> dict:
    return outcome(Learner(config(name, {"backend": "torch"})))


def checkpointed_and_resumed(cfg: Any, rank: int, world: int, directory: Path) -> dict:
    """An uninterrupted run that checkpoints after task RESUME_AFTER (rank 0 writes, as
    lifelong/platform/worker.py does), then a fresh learner restored from that file on every
    rank and run to the end: the uninterrupted outcome, with the resumed one under "resumed"."""
    learner = Learner(cfg, rank, world)

    def at_boundary(current: Learner) -> None:
        if len(current.result.R) == RESUME_AFTER + 1:
            state = checkpoint.capture(current)  # collective
            if rank == 0:
                checkpoint.write(state, directory)

    learner.at_boundary = at_boundary
    out = outcome(learner)
    torch.distributed.barrier()  # the file is complete before any rank reads it
    resumed = Learner(cfg, rank, world)
    checkpoint.restore(resumed, checkpoint.read(directory / checkpoint.FILE, cfg))
    out["resumed"] = outcome(resumed)
    return out


def sharded_loop(rank: int, world: int, payload: dict) -> dict:
    """Learner-process body: every strategy in turn on this worker group; returns this
    rank's outcomes (rank 0's in full, the others' GateON, MoE and hnet states only)."""
    torch.set_num_threads(1)
    results = {}
    for name in payload["strategies"]:
        engine = {"backend": "deepspeed", "workers": world, "zero_stage": payload["stage"]}
        cfg = config(name, engine)
        if name in RESUMED:
            directory = Path(payload["checkpoint"]) / CHECKPOINT_DIR.format(name=name, stage=payload["stage"])
            results[name] = checkpointed_and_resumed(cfg, rank, world, directory)
        else:
            results[name] = outcome(Learner(cfg, rank, world))
    return results if rank == 0 else {name: _states_only(out) for name, out in results.items()}


def _states_only(out: dict) -> dict:
    """A non-zero rank's share of an outcome: its strategy states, resumed run included."""
    kept = {k: v for k, v in out.items() if k in STATES}
    if "resumed" in out:
        kept["resumed"] = _states_only(out["resumed"])
    return kept


def sharded(stage: int, names: list[str], workdir: Path, workers: int = 2) -> dict:
    """Rank 0's outcome per strategy; GateON's, MoE's and hnet's also hold every rank's state under
    "ranks" (RESUMED's resumed runs too)."""
    from lifelong.platform.worker_group import Placement, fit

    payload = {"stage": stage, "strategies": names, "checkpoint": str(workdir.resolve())}
    ranks = fit(sharded_loop, payload, Placement(workers, cpus_per_worker=1), max_failures=0)
    got = ranks[0]
    for name, out in got.items():
        for key in STATES:
            if key in out:
                out["ranks"] = [r[name][key] for r in ranks]
            if key in out.get("resumed", {}):
                out["resumed"]["ranks"] = [r[name]["resumed"][key] for r in ranks]
    return got


if __name__ == "__main__":  # quick look: python -m tests.e2e.sharding_harness STAGE [NAME ...]
    import sys

    import ray

    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True,
             dashboard_host="127.0.0.1", num_cpus=2, configure_logging=False)
    stage = int(sys.argv[1])
    names = sys.argv[2:] or list(STRATEGIES)
    got = sharded(stage, names, Path(f"/tmp/sharded{stage}").resolve())
    for name in names:
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
        if "gateon" in ref:
            a, b = ref["gateon"]["state"], got[name]["gateon"]["state"]
            line += (f" available {ref['gateon']['available_fraction']} vs {got[name]['gateon']['available_fraction']}"
                     f" max|dA|={max(float((a['available'][k] - b['available'][k]).abs().max()) for k in a['available']):.2e}"
                     f" switches {a['switches']} vs {b['switches']} chosen {a['eval_chosen']} vs {b['eval_chosen']}")
        if "moe" in ref:
            a, b = ref["moe"]["state"], got[name]["moe"]["state"]
            line += (f" frozen {a['frozen'].sum(1).tolist()} vs {b['frozen'].sum(1).tolist()}"
                     f" same frozen/usage {torch.equal(a['frozen'], b['frozen'])}/"
                     f"{all(torch.equal(u, v) for u, v in zip(a['usage'], b['usage']))}")
        print(line, flush=True)
    print(json.dumps({"ok": True}))
