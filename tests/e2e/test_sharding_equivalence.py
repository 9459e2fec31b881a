"""Correctness under sharding: for every shipped strategy and ZeRO stage 0-3, the same
seeded stream gives the same accuracy matrix on 1 plain torch worker (in-process) and
on 2 DeepSpeed workers (a real Ray Train worker group, gloo).

Tolerance: |R_plain - R_sharded| <= 0.012 everywhere, i.e. at most two flipped test
predictions on these ~180-row test sets. Two workers averaging the gradients of two
equal halves reproduce the full-batch mean up to fp32 rounding (on this machine the
matrices agree exactly); the slack covers reduction-order rounding on other
backends (NCCL) growing over a few hundred steps into a flipped prediction or two. EWC's
Fisher, a mean over rows computed on shards and all-reduced, must agree to 1e-4
relative. Continual backprop and ReDo replace units from all-reduced activity statistics;
they must replace as many units on the sharded run as on the plain one (and some at all),
on an MLP and, for continual backprop, on a conv stack. And ZeRO must really shard: from stage 1 on, each worker holds half the
optimizer state of stage 0.

GateON (n and p availability with task contexts; n with detected contexts) decides from
all-reduced relevance and losses, so its state must be *bitwise* the same on both ranks
(availability, committed masks, detector, switches, eval-chosen contexts, usage). Against
the plain worker: the same switch steps, contexts and eval-chosen contexts; availability
within 1e-3 (1e-5 measured, the largest from p-GateON's per-weight relevance (dL/dw * w)^2)
and the fraction of available units per layer within one unit of 64; and availability must
have fallen somewhere, into the update masks. Its detect run is checkpointed after task 1
on the workers and resumed there from the file: bitwise the uninterrupted run; and resumed
on one plain worker: the plain reference within the tolerances above. (GateON runs on Adam
for one epoch: tests/e2e/sharding_harness.py says why.)

MoE (task-routed on Split digits with task ids; task-free on the class-incremental split)
routes with noise drawn per row of the global batch and balances from all-reduced slot
counts and routing mass, so each rank's state must again be *bitwise* the same (frozen
experts, routable and owned tables, usage counts, trained contexts, task inference, gates,
masks). Against the plain worker: the same frozen experts, tables, trained contexts, masks
and usage counts (every routing decision alike); task inference within the R tolerance; the
gates' class means within GATE_TOLERANCE and their subspaces (projectors V V^T, which no
sign flip of an eigenvector changes) within SUBSPACE_TOLERANCE. The task-free run is
checkpointed and resumed like GateON's.

Hypernetworks (task-conditioned on Split digits; HNET+ENT on the class-incremental split,
one past task regularised per step) generate every weight from parameters that ZeRO-3
gathers in the hypernetwork's own forward, where the output regulariser is computed too; the
targets h(e_t', Theta*) come from ``ctx.full_params()`` at each task start. Each rank's state
must be bitwise the same (trained tasks, targets, step, task inference, masks). Against the
plain worker: the same tasks, step and masks, targets within TARGET_TOLERANCE and the
per-row task inference after each task within the R tolerance. HNET+ENT is checkpointed and
resumed like GateON's.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lifelong.platform import checkpoint
from lifelong.platform.learner import Learner
from tests.conftest import same
from tests.e2e.sharding_harness import (CHECKPOINT_DIR, RESUME_AFTER, RESUMED, STRATEGIES, config,
                                        gateon_state, hnet_state, moe_state, outcome, plain, sharded)

pytestmark = pytest.mark.slow
TOLERANCE = 0.012
AVAILABLE_TOLERANCE = 1e-3  # |A_plain - A_sharded|, A in [0, 1]: 1e-5 measured
FRACTION_TOLERANCE = 0.02  # available fraction per layer: one unit of 64
# MoE's gates come from float64 moments summed in another order on 2 workers: measured 0.0
# (means, fp32) and 2e-15 (projectors) at every stage. The slack covers other reduction orders
# (NCCL) and a small eigengap at the rank cut; a wrong moment (one worker's half) is off by ~0.1.
GATE_TOLERANCE = 1e-6  # |mean_plain - mean_sharded| of a class autoencoder (inputs ~N(0, 1))
SUBSPACE_TOLERANCE = 1e-6  # |P_plain - P_sharded| of its rank-r projector P = V V^T
# hnet targets h(e_t', Theta*) (values up to 0.9): measured 2.7e-5 (hnet_task) and 5e-7 (hnet_ent) at every
# stage, from Adam steps on gradients summed in another order; a wrong snapshot is off by ~0.1.
TARGET_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def references() -> dict:
    return {name: plain(name) for name in STRATEGIES}


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_two_sharded_workers_match_one_plain_worker(stage, references, ray_cluster, tmp_path):
    got = sharded(stage, list(STRATEGIES), tmp_path)
    for name, ref in references.items():
        diff = max(abs(a - b) for ra, rb in zip(ref["R"], got[name]["R"]) for a, b in zip(ra, rb))
        assert diff <= TOLERANCE, (name, stage, ref["R"], got[name]["R"])
        for counter in ("replaced", "recycled"):  # unit strategies acted, on the same units
            if counter in ref:
                assert got[name][counter] == ref[counter] and sum(ref[counter].values()) > 0, name
        if "gateon" in ref:
            check_gateon(name, ref["gateon"], got[name])
        if "moe" in ref:
            check_moe(name, ref["moe"], got[name])
        if "hnet" in ref:
            check_hnet(name, ref["hnet"], got[name])
    for key, value in references["ewc"]["fisher"].items():
        rel = float((value - got["ewc"]["fisher"][key]).norm() / value.norm())
        assert rel < 1e-4, (key, rel)
    # Strategies differ from each other, so agreeing with their own reference means something.
    assert references["ewc"]["R"] != references["naive"]["R"] != references["replay"]["R"]
    # The plain worker holds the whole (unsharded) state: SGD momentum for every parameter.
    ratio = got["naive"]["optimizer_state_bytes"] / references["naive"]["optimizer_state_bytes"]
    assert ratio == pytest.approx(1.0 if stage == 0 else 0.5, abs=0.05), ratio
    for name in RESUMED:
        check_resume(name, references[name], got[name], tmp_path / CHECKPOINT_DIR.format(name=name, stage=stage))


def check_gateon(name: str, ref: dict, got: dict) -> None:
    """Every rank decided alike, and as the plain worker did."""
    for rank, theirs in enumerate(got["ranks"][1:], start=1):
        assert same(theirs, got["ranks"][0]), (name, rank)
    mine, theirs = ref["state"], got["gateon"]["state"]
    for key in ("switches", "eval_chosen", "usage", "boundaries", "steps"):
        assert theirs[key] == mine[key], (name, key, mine[key], theirs[key])
    assert theirs["detector"]["current"] == mine["detector"]["current"], name
    assert len(theirs["detector"]["history"]) == len(mine["detector"]["history"]), name
    for which in ("available", "committed"):
        for key, value in mine[which].items():
            assert float((value - theirs[which][key]).abs().max()) <= AVAILABLE_TOLERANCE, (name, which, key)
    assert got["gateon"]["masks"].keys() == ref["masks"].keys(), name
    for layer, fraction in ref["available_fraction"].items():
        assert abs(got["gateon"]["available_fraction"][layer] - fraction) <= FRACTION_TOLERANCE, (name, layer)
    # ... and there was something to agree on: units went unavailable, and were frozen by it.
    assert min(ref["available_fraction"].values()) < 0.95, (name, ref["available_fraction"])
    assert ref["masks"] and min(float(m.min()) for m in ref["masks"].values()) < 0.05, name
    if STRATEGIES[name].get("context") == "detect":
        assert mine["switches"] and len(set(mine["eval_chosen"])) > 1, (name, mine)


def check_resume(name: str, ref: dict, got: dict, directory: Any) -> None:
    """A RESUMED row's checkpoint carried all of its state: resumed on the workers it ends
    bitwise as the uninterrupted run did; resumed on one plain worker, as the plain reference did."""
    state = torch.load(directory / checkpoint.FILE, weights_only=True)
    saved = state["strategy"]
    assert state["next_task"] == RESUME_AFTER + 1 and state["engine"]["update_masks"], name
    key = next(k for k in ("gateon", "moe", "hnet") if k in ref)
    if key == "hnet":  # two tasks trained, the first's target snapshotted at task 1's start
        assert saved["trained"] == list(range(RESUME_AFTER + 1)) and saved["targets"].shape[0] == RESUME_AFTER, saved
    elif key == "gateon":
        assert len(saved["switches"]) == RESUME_AFTER, saved
        assert len(saved["detector"]["history"]) == RESUME_AFTER + 1 and saved["detector"]["current"] == RESUME_AFTER
        assert min(float(a.min()) for a in saved["committed"].values()) < 0.05  # masks in force ...
        assert any(n.startswith("gates.") for n in state["engine"]["params"])
    else:  # experts frozen, gates fitted for the tasks so far
        assert saved["trained"] == list(range(RESUME_AFTER + 1)) and bool(saved["frozen"].any()), saved
        if STRATEGIES[name]["routing"] == "free":
            assert sorted(set(saved["gates"]["contexts"].tolist())) == saved["trained"], saved["gates"]
    resumed = got["resumed"]
    assert resumed["R"] == got["R"], (name, resumed["R"], got["R"])
    assert same(resumed[key], got[key]) and same(resumed["ranks"], got["ranks"]), name
    learner = Learner(config(name, {"backend": "torch"}))  # 2 ZeRO workers -> 1 plain worker
    checkpoint.restore(learner, checkpoint.read(directory / checkpoint.FILE, learner.cfg))
    on_plain = outcome(learner)
    diff = max(abs(a - b) for ra, rb in zip(ref["R"], on_plain["R"]) for a, b in zip(ra, rb))
    assert diff <= TOLERANCE, (name, ref["R"], on_plain["R"])
    if key == "gateon":
        check_gateon(name, ref["gateon"], {**on_plain, "ranks": [gateon_state(learner)]})
    elif key == "moe":
        check_moe(name, ref["moe"], {**on_plain, "ranks": [moe_state(learner)]})
    else:
        check_hnet(name, ref["hnet"], {**on_plain, "ranks": [hnet_state(learner)]})


def check_moe(name: str, ref: dict, got: dict) -> None:
    """Every rank decided alike, and as the plain worker did."""
    for rank, theirs in enumerate(got["ranks"][1:], start=1):
        assert same(theirs, got["ranks"][0]), (name, rank)
    mine, theirs = ref["state"], got["moe"]["state"]
    for key in ("slot", "active", "step", "trained", "frozen", "routable", "owned", "usage"):
        assert same(theirs[key], mine[key]), (name, key, mine[key], theirs[key])
    assert same(got["moe"]["masks"], ref["masks"]), name
    assert len(theirs["inference"]) == len(mine["inference"]), name
    for a, b in zip(mine["inference"], theirs["inference"]):
        assert max(abs(x - y) for x, y in zip(a, b)) <= TOLERANCE, (name, mine["inference"], theirs["inference"])
    gates, other = mine["gates"], theirs["gates"]
    assert gates.keys() == other.keys(), name
    if gates:
        assert same(gates["contexts"], other["contexts"]) and same(gates["classes"], other["classes"]), name
        assert float((gates["means"] - other["means"]).abs().max()) <= GATE_TOLERANCE, name
        projector = lambda v: v @ v.transpose(1, 2)  # noqa: E731
        gap = float((projector(gates["bases"]) - projector(other["bases"])).abs().max())
        assert gap <= SUBSPACE_TOLERANCE, (name, gap)
    # ... and there was something to agree on: experts frozen in every layer, every fresh
    # expert used, and (task-free) most test rows' task inferred right.
    assert bool(mine["frozen"].any(1).all()), (name, mine["frozen"])
    assert bool((sum(mine["usage"]) > 0).all()), (name, mine["usage"])
    if STRATEGIES[name]["routing"] == "free":
        assert min(mine["inference"][-1]) > 0.5, (name, mine["inference"])


def check_hnet(name: str, ref: dict, got: dict) -> None:
    """Every rank kept the same hypernetwork state, and the plain worker's within tolerance."""
    for rank, theirs in enumerate(got["ranks"][1:], start=1):
        assert same(theirs, got["ranks"][0]), (name, rank)
    mine, theirs = ref["state"], got["hnet"]["state"]
    for key in ("current", "trained", "step"):
        assert theirs[key] == mine[key], (name, key, mine[key], theirs[key])
    assert same(got["hnet"]["masks"], ref["masks"]), name
    assert theirs["targets"].shape == mine["targets"].shape, name
    gap = float((mine["targets"] - theirs["targets"]).abs().max())
    assert gap <= TARGET_TOLERANCE, (name, gap)
    assert len(theirs["inference"]) == len(mine["inference"]), name
    for a, b in zip(mine["inference"], theirs["inference"]):
        assert max(abs(x - y) for x, y in zip(a, b)) <= TOLERANCE, (name, mine["inference"], theirs["inference"])
    # ... and there was something to agree on: targets of both past tasks snapshotted at the
    # last task's start and (HNET+ENT) a task inferred for every test row after each task.
    assert mine["trained"] == [0, 1, 2] and mine["targets"].shape[0] == 2, (name, mine["trained"])
    if STRATEGIES[name]["inference"] == "entropy":
        assert len(mine["inference"]) == 3, (name, mine["inference"])
