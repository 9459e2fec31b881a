"""Capture/restore of the training state on 2 DeepSpeed workers in a real Ray Train group
(gloo), at ZeRO stages 0-3, for SGD with momentum and Adam; one group runs everything
(tests/e2e/engine_state_harness.py), rank 0 saves the results, this process compares.

Tolerances, and why:
- Same stage, resumed vs uninterrupted: bitwise (torch.equal). The restored engine holds
  the same fp32 values and takes the same collective steps, so nothing may differ.
- Stage 0 -> stage 2 or 3: bitwise here too, and asserted so (TOL_STAGE = 0). With two
  ranks every reduction is one addition (commutative) and the averaging divides by 2
  (exact), so ZeRO's reduce-scatter and ZeRO-0's all-reduce produce the same bits.
- World size 1 <-> 2 (plain single-process engine vs 2 sharded workers): |diff| <= 1e-6.
  The full-batch mean and the mean of two half-batch means round differently in the last
  bit; that may grow over a few steps, bounded by TOL_WORLD.
"""

from __future__ import annotations

import pytest
import torch

from lifelong.platform.engine_state import capture_training_state
from tests.e2e.engine_state_harness import (K, OPTIMIZERS, RESET_MASK, STAGES, engine, global_batches,
                                            resume, run_group, train)

pytestmark = pytest.mark.slow
TOL_STAGE = 0.0
TOL_WORLD = 1e-6


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.fixture(scope="module")
def group(ray_cluster, tmp_path_factory) -> dict:
    """Plain single-process captures after K steps (for the world 1 -> 2 case), then the
    worker group."""
    root = tmp_path_factory.mktemp("engine_state")
    data = global_batches()
    plain = {}
    for name, optim in OPTIMIZERS.items():
        eng = engine(optim, None, seed=0)
        train(eng, data[:K])
        plain[name] = capture_training_state(eng)
    torch.save(plain, root / "plain.pt")
    return run_group(root / "out.pt", root / "plain.pt")


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("stage", STAGES)
def test_resume_at_the_same_stage_is_bitwise_uninterrupted(group, name, stage):
    run = group[name]["runs"][f"zero{stage}"]
    assert max_diff(run["captured"], run["uninterrupted"]) == 0.0  # capturing disturbs nothing
    assert max_diff(run["resumed"], run["uninterrupted"]) == 0.0
    # The state is whole and named, whatever the stage: the same as stage 0's, bit for bit.
    state, zero0 = run["state"], group[name]["runs"]["zero0"]["state"]
    assert max_diff(state["params"], zero0["params"]) == 0.0
    assert state["optimizer"].keys() == zero0["optimizer"].keys() == state["params"].keys()
    for param, entry in state["optimizer"].items():
        assert max_diff(entry, zero0["optimizer"][param]) == 0.0, param
    assert state["optimizer_step"] == (K if name == "adam" else None)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("target", [2, 3])
def test_stage0_capture_resumes_at_another_stage(group, name, target):
    reference = group[name]["runs"]["zero0"]["uninterrupted"]
    assert max_diff(group[name]["zero0_to"][f"zero{target}"], reference) <= TOL_STAGE


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_moves_between_world_sizes(group, name):
    """1 -> 2: a plain single-process capture, resumed at ZeRO-3 on 2 workers. 2 -> 1: a
    ZeRO-3 capture from 2 workers, resumed here on the plain engine over whole batches."""
    reference = group[name]["runs"]["zero3"]["uninterrupted"]
    assert max_diff(group[name]["plain_to_zero3"], reference) <= TOL_WORLD
    rest = global_batches()[K:]
    state = group[name]["runs"]["zero3"]["state"]
    assert max_diff(resume(state, OPTIMIZERS[name], None, rest), reference) <= TOL_WORLD
    # and the comparison has teeth: the last M steps moved the parameters
    assert max_diff(state["params"], reference) > 100 * TOL_WORLD


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("stage", STAGES)
def test_reset_optimizer_state_zeroes_exactly_the_masked_rows(group, name, stage):
    """The engine's own per-row reset, read back through the captured state: it asks
    DeepSpeed only for the keys the optimizer holds, and writes odd-sized ZeRO-3 slices."""
    reset = group[name]["runs"][f"zero{stage}"]["reset"]
    for param, entry in reset["before"].items():
        for key, value in entry.items():
            expected = value.masked_fill(RESET_MASK, 0.0) if param == "0.bias" else value
            assert torch.equal(reset["after"][param][key], expected), (param, key)
