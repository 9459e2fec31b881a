"""MoE resumes exactly from a task-boundary checkpoint, task-free (``routing=free``), its
most stateful mode: the expert pools and routers (parameters), the frozen experts and the
update masks they set, the routing tables (routable experts, owned classes), the step that
seeds the routing noise, the usage counts, the trained contexts, the task-inference rows
and the fitted class autoencoder gates. Stopped after task 1 and resumed from the file into
a fresh learner, it must end with the uninterrupted run's matrix *and* state, bit for bit:
task 2 routes with noise seeded by the restored step, freezes by its mass on top of the
restored frozen set, and is evaluated through the restored gates.
(tests/e2e/test_sharding_equivalence.py resumes it on 2 ZeRO workers and moves it to 1 plain worker.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lifelong.platform import checkpoint
from lifelong.platform.learner import Learner
from lifelong.streams.registry import build_stream
from tests.conftest import make_config, same
from tests.unit.test_checkpoint import stopped_after
from tests.unit.test_gateon_resume import final_state

STOP_AFTER = 1
FREE = {"name": "moe", "routing": "free", "experts": 6, "per_task": 2, "k": 2, "freeze": 1,
        "noise": 1.0, "balance": 0.01, "balance_kind": "cv2", "z_loss": 0.001, "gate_rank": 8}


def config(strategy: dict, **train: Any) -> Any:
    return make_config(stream={"dataset": "digits", "scenario": "split", "n_tasks": 3, "classes_per_task": 3,
                               "setting": "class", "train_samples_per_task": 120, "test_samples_per_task": 60},
                       model={"hidden": [32, 32]}, strategy=strategy, optim={"name": "adam", "lr": 0.01},
                       train={"epochs": 2, "batch_size": 16, **train}, engine={"backend": "torch"}, seed=1)


@pytest.fixture(scope="module")
def stream():
    return build_stream(config(FREE).stream, seed=1)


def test_task_free_moe_resumes_with_all_of_its_state(stream, tmp_path):
    cfg = config(FREE)
    uninterrupted = Learner(cfg, stream=stream)
    result = uninterrupted.run()
    state = stopped_after(cfg, stream, task=STOP_AFTER)

    saved = state["strategy"]  # the checkpoint holds two tasks' worth of state ...
    assert saved["trained"] == [0, 1] and saved["slot"] == -1 and saved["step"] > 0
    assert bool(saved["frozen"].any(1).all()) and len(saved["usage"]) == 2
    assert sorted(set(saved["gates"]["contexts"].tolist())) == [0, 1]
    assert len(saved["inference"]) == STOP_AFTER + 1  # one per task (not the evaluation before the first)
    assert state["engine"]["update_masks"]  # ... that froze experts and output rows

    resumed = Learner(cfg, stream=stream)
    checkpoint.restore(resumed, checkpoint.read(checkpoint.write(state, tmp_path), cfg))
    assert same(resumed.strategy.state_dict(), saved)
    assert same(resumed.ctx.update_masks(), state["engine"]["update_masks"])
    assert resumed.run().R == result.R
    want, got = final_state(uninterrupted), final_state(resumed)
    assert same(got["strategy"], want["strategy"])
    assert want["strategy"]["trained"] == [0, 1, 2]  # the third task came after the resume
    for part in ("masks", "params"):
        assert got[part].keys() == want[part].keys()
        for name, value in want[part].items():
            assert torch.equal(got[part][name], value), (part, name)
