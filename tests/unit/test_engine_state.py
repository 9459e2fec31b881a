"""Capture/restore of an engine's training state on the plain torch engine: a resumed
engine must train bitwise like one that was never interrupted, through a
``torch.load(weights_only=True)`` round trip. (Sharded DeepSpeed engines, other ZeRO
stages and cross-stage resumes: tests/e2e/test_engine_state_sharded.py.)"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lifelong.platform.config import OptimConfig
from lifelong.platform.engine import TorchEngine
from lifelong.platform.engine_state import capture_training_state, restore_training_state

# Weight decay on: it makes the restore's zero-gradient step move parameters and SGD
# momentum, so a restore that failed to overwrite them would show.
OPTIMIZERS = {
    "sgd_momentum": OptimConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": OptimConfig(name="adam", lr=0.01, weight_decay=1e-3),
}


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)  # odd widths on purpose: no size divides evenly by 2
    return nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))


def engine(optim: OptimConfig, seed: int = 0) -> TorchEngine:
    return TorchEngine(mlp(seed), optim)


def batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 7, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def train(eng: TorchEngine, data: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for x, y in data:
        eng.backward(F.cross_entropy(eng(x), y))
        eng.step()


def roundtrip(state: dict) -> dict:
    """Through bytes, as a checkpoint file would go; weights_only refuses anything but data."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_params(a: TorchEngine, b: TorchEngine) -> None:
    for name, value in a.full_params().items():
        assert torch.equal(value, b.full_params()[name]), name


@pytest.mark.parametrize("optim", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_resumed_engine_trains_bitwise_like_an_uninterrupted_one(optim):
    first, rest = batches(3, seed=1), batches(4, seed=2)
    a = engine(optim)
    train(a, first)
    state = roundtrip(capture_training_state(a))
    b = engine(optim, seed=1)  # another initialisation: everything must come from the state
    restore_training_state(b, state, sample_input=first[0][0])

    assert_same_params(a, b)
    if optim.name == "adam":
        assert state["optimizer_step"] == 3
        steps = [s["step"] for s in b.optimizer.state.values()]
        assert all(s.dtype == torch.float32 and s.dim() == 0 and float(s) == 3 for s in steps)
    else:
        assert state["optimizer_step"] is None
    train(a, rest)
    train(b, rest)
    assert_same_params(a, b)
    after_a, after_b = capture_training_state(a), capture_training_state(b)
    for name, entry in after_a["optimizer"].items():
        for key, value in entry.items():
            assert torch.equal(value, after_b["optimizer"][name][key]), (name, key)
    assert after_a["optimizer_step"] == after_b["optimizer_step"]


@pytest.mark.parametrize("optim", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_state_captured_before_any_step_resumes_as_never_stepped(optim):
    rest = batches(4, seed=2)
    a = engine(optim)
    state = roundtrip(capture_training_state(a))
    assert state["optimizer"] == {} and state["optimizer_step"] is None
    b = engine(optim, seed=1)
    restore_training_state(b, state, sample_input=rest[0][0])
    assert not any(b.optimizer.state.values())  # no zero-gradient step was taken
    train(a, rest)
    train(b, rest)
    assert_same_params(a, b)


@pytest.mark.parametrize("optim", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_unstepped_state_into_a_stepped_engine_acts_as_never_stepped(optim):
    """Zeroed SGD momentum / Adam moments with step 0 must train exactly like no state:
    SGD's first step sets buf = grad, later ones buf = 0.9 * buf + grad, equal when buf = 0."""
    rest = batches(4, seed=2)
    a = engine(optim)
    state = roundtrip(capture_training_state(a))
    b = engine(optim, seed=1)
    train(b, batches(3, seed=3))
    restore_training_state(b, state, sample_input=rest[0][0])
    train(a, rest)
    train(b, rest)
    assert_same_params(a, b)


def _drop_a_parameter(state: dict) -> None:
    del state["params"]["2.bias"]


def _add_an_unknown_parameter(state: dict) -> None:
    state["optimizer"]["head.weight"] = state["optimizer"]["0.weight"]


@pytest.mark.parametrize("spoil, message", [(_drop_a_parameter, r"missing parameter '2\.bias'"),
                                            (_add_an_unknown_parameter, r"unknown parameter 'head\.weight'")])
def test_a_missing_or_unknown_parameter_is_named(spoil, message):
    a = engine(OPTIMIZERS["adam"])
    train(a, batches(1, seed=1))
    state = capture_training_state(a)
    spoil(state)
    with pytest.raises(ValueError, match=message):
        restore_training_state(engine(OPTIMIZERS["adam"]), state, batches(1, seed=1)[0][0])


def test_a_shape_mismatch_is_named():
    state = capture_training_state(engine(OPTIMIZERS["adam"]))
    state["params"]["0.bias"] = torch.zeros(6)
    with pytest.raises(ValueError, match=r"'0\.bias'.*\(6,\).*\(5,\)"):
        restore_training_state(engine(OPTIMIZERS["adam"]), state, batches(1, seed=1)[0][0])


def test_state_from_another_optimizer_is_refused():
    a = engine(OPTIMIZERS["sgd_momentum"])
    train(a, batches(1, seed=1))
    state = capture_training_state(a)
    with pytest.raises(ValueError, match=r"momentum_buffer.*exp_avg"):
        restore_training_state(engine(OPTIMIZERS["adam"]), state, batches(1, seed=1)[0][0])


def test_update_masks_resume_and_a_bad_one_is_refused_before_anything_changes():
    a = engine(OPTIMIZERS["adam"])
    a.update_mask("0.weight", torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0]))
    train(a, batches(2, seed=1))
    state = roundtrip(capture_training_state(a))
    b = engine(OPTIMIZERS["adam"], seed=1)
    b.update_mask("2.bias", torch.tensor(0.0))  # not in the state: cleared by the restore
    restore_training_state(b, state, sample_input=batches(1, seed=2)[0][0])
    assert b.rules.masks.keys() == {"0.weight"}
    train(a, batches(3, seed=2))
    train(b, batches(3, seed=2))
    assert_same_params(a, b)
    state["update_masks"]["0.weight"] = torch.ones(7)
    c = engine(OPTIMIZERS["adam"], seed=2)
    before = {n: v.clone() for n, v in c.full_params().items()}
    with pytest.raises(ValueError, match=r"update mask for '0\.weight' has shape \(7,\)"):
        restore_training_state(c, state, batches(1, seed=1)[0][0])
    assert not c.rules.masks and not any(c.optimizer.state.values())
    assert all(torch.equal(v, before[n]) for n, v in c.full_params().items())
