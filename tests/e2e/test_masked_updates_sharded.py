"""Update masks at ZeRO 0-3, on 1 and 2 DeepSpeed workers (real Ray worker groups, gloo),
for SGD-momentum, Adam and AdamW with weight decay, with the fused kernels the engine picks
(``engine.kernels: auto``). The masks split units, elements and a whole tensor; ZeRO's
partitions split the 7-5-3 MLP's parameters across ranks, so each rank maps the masks onto
its own slices (lifelong/platform/partition_layout.py).

Tolerances, and why:
- Frozen entries, and their optimizer state: bitwise. Nothing may write them.
- Free and scaled entries against the plain single-process engine with the same rules:
  |diff| <= 1e-6 (TOL_WORLD, as in test_engine_state_sharded.py: half-batch means round
  differently from whole-batch means in the last bit).
- A resume from a mid-run checkpoint: bitwise, the masks travel in the training state.
"""

from __future__ import annotations

import pytest
import torch

from tests.e2e.engine_state_harness import STAGES
from tests.e2e.masked_update_harness import OPTIMIZERS, masks, plain_runs, run_group

pytestmark = pytest.mark.slow
TOL_WORLD = 1e-6
WORLDS = (1, 2)


@pytest.fixture(scope="module")
def runs(ray_cluster, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("masked")
    return {"plain": plain_runs(), **{world: run_group(root / f"w{world}.pt", world) for world in WORLDS}}


def frozen_of(name: str) -> torch.Tensor:
    shapes = {"0.weight": (5, 7), "0.bias": (5,), "2.weight": (3, 5), "2.bias": (3,)}
    mask = masks()[name]
    if mask.dim() == 1 and len(shapes[name]) == 2:
        mask = mask[:, None]
    return mask.expand(shapes[name]) == 0


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("stage", STAGES)
def test_frozen_entries_and_state_are_bit_identical(runs, world, name, stage):
    run = runs[world][name][f"zero{stage}"]
    for param in masks():
        frozen = frozen_of(param)
        assert torch.equal(run["after"]["params"][param][frozen], run["before"]["params"][param][frozen])
        state_keys = run["after"]["optimizer"][param].keys()
        assert state_keys == ({"momentum_buffer"} if name == "sgd_momentum" else {"exp_avg", "exp_avg_sq"})
        for key in state_keys:
            after, before = run["after"]["optimizer"][param][key], run["before"]["optimizer"][param][key]
            assert torch.equal(after[frozen], before[frozen]), (param, key)
            assert before[frozen].abs().sum() > 0  # the kept state is not trivially zero


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("stage", STAGES)
def test_the_rest_matches_the_plain_engine_with_the_same_rules(runs, world, name, stage):
    run, plain = runs[world][name][f"zero{stage}"], runs["plain"][name]
    for param, value in run["after"]["params"].items():
        assert float((value - plain["after"]["params"][param]).abs().max()) <= TOL_WORLD, param
        moved = ~frozen_of(param)
        if moved.any():  # and the free entries did move
            assert not torch.equal(value[moved], run["before"]["params"][param][moved])


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("stage", STAGES)
def test_a_checkpoint_carries_the_masks_and_resumes_exactly(runs, world, name, stage):
    run = runs[world][name][f"zero{stage}"]
    assert run["saved_masks"].keys() == masks().keys()
    for param, value in run["resumed"].items():
        assert torch.equal(value, run["after"]["params"][param]), param
