"""GateON resumes exactly from a task-boundary checkpoint, in its most stateful mode
(``context=detect``): the gates (parameters), the running and the committed availability,
the update masks they set, and the context detector (histories, confidences, current
context), with the switches and eval-chosen contexts so far. Stopped after task 1, one
switch and two contexts in, then resumed from the file into a fresh learner, it must end
with the uninterrupted run's matrix *and* state, bit for bit: the second switch, found
after the resume, depends on every part of it. (tests/unit/test_checkpoint.py resumes every
strategy after task 0; tests/e2e/test_sharding_equivalence.py resumes GateON on 2 ZeRO
workers and moves it to 1 plain worker.)"""

from __future__ import annotations

import pytest
import torch

from lifelong.platform import checkpoint
from lifelong.platform.learner import Learner
from lifelong.streams.registry import build_stream
from tests.conftest import same
from tests.unit.test_checkpoint import STRATEGIES, config, stopped_after

STOP_AFTER = 1


@pytest.fixture(scope="module")
def stream():
    return build_stream(config({"name": "naive"}).stream, seed=1)


def final_state(learner: Learner) -> dict:
    """The strategy's state, the masks in force and the parameters at the end of a run."""
    return {"strategy": checkpoint.detached(learner.strategy.state_dict()),
            "masks": learner.ctx.update_masks(),
            "params": {k: v.detach().clone() for k, v in learner.engine.full_params().items()}}


def test_gateon_detect_resumes_with_all_of_its_state(stream, tmp_path):
    cfg = config(STRATEGIES["gateon_detect"], "adam")
    uninterrupted = Learner(cfg, stream=stream)
    result = uninterrupted.run()
    state = stopped_after(cfg, stream, task=STOP_AFTER)

    saved = state["strategy"]  # the checkpoint holds a switch's worth of state ...
    assert len(saved["switches"]) == 1 and saved["detector"]["current"] == 1
    assert len(saved["detector"]["history"]) == 2 and min(saved["detector"]["confidence"]) > 0
    assert saved["available"].keys() == saved["committed"].keys()
    assert any(not torch.equal(saved["available"][k], saved["committed"][k]) for k in saved["available"])
    assert min(float(a.min()) for a in saved["committed"].values()) < 0.05  # ... that froze units
    assert state["engine"]["update_masks"] and any(n.startswith("gates.") for n in state["engine"]["params"])

    resumed = Learner(cfg, stream=stream)
    checkpoint.restore(resumed, checkpoint.read(checkpoint.write(state, tmp_path), cfg))
    assert same(resumed.strategy.state_dict(), saved)  # every part back, committed A included
    assert same(resumed.ctx.update_masks(), state["engine"]["update_masks"])
    assert resumed.run().R == result.R
    want, got = final_state(uninterrupted), final_state(resumed)
    assert len(want["strategy"]["switches"]) == 2  # the second switch came after the resume
    assert got["strategy"]["switches"] == want["strategy"]["switches"]
    assert got["strategy"]["eval_chosen"] == want["strategy"]["eval_chosen"]
    assert got["strategy"]["detector"] == want["strategy"]["detector"]
    for part in ("masks", "params"):
        assert got[part].keys() == want[part].keys()
        for name, value in want[part].items():
            assert torch.equal(got[part][name], value), (part, name)
    for which in ("available", "committed"):
        for name, value in want["strategy"][which].items():
            assert torch.equal(got["strategy"][which][name], value), (which, name)
