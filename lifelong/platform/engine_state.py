"""An engine's training state -- full fp32 parameters and full optimizer state, keyed by
parameter name -- captured on any engine and restored into any other, for checkpoint/resume.

Why not DeepSpeed's own checkpoints: they are pickles (``torch.load(weights_only=False)``
in deepspeed/runtime/checkpoint_engine/torch_checkpoint_engine.py, so loading one runs
whatever code it names), and they hold each rank's flat ZeRO partitions, which ties a
resume to the world size and stage that wrote them. This state is plain CPU tensors,
ints and dicts: ``torch.load(path, weights_only=True)`` reads it, and it restores into a
plain ``TorchEngine`` or a ``DeepSpeedEngine`` at any ZeRO stage and any world size.

Both functions are collective for DeepSpeed engines: every rank calls them, in step.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from lifelong.platform.engine import held_state_keys, set_full_fp32

TrainingState = dict[str, Any]


def capture_training_state(engine: Any) -> TrainingState:
    """Collective: full fp32 parameters, full optimizer state and update masks, keyed by
    parameter name, on every rank, as CPU tensors:
    ``{"params": {name: Tensor}, "optimizer": {name: {state_key: Tensor}},
    "optimizer_step": int | None, "update_masks": {name: Tensor}}`` (``optimizer`` is empty
    before the first step; a mask is as a strategy gave it, see update_rules.py)."""
    params = {n: v.detach().to("cpu", copy=True) for n, v in engine.full_params().items()}
    inner = _inner_optimizer(engine)
    keys = held_state_keys(inner)
    optimizer: dict[str, dict[str, torch.Tensor]] = {}
    for name, param in engine.named.items():
        entry = {k: v.detach().to("cpu", copy=True) for k in keys
                 if (v := _get_state(engine, inner, param, k)) is not None}
        if entry:
            optimizer[name] = entry
    return {"params": params, "optimizer": optimizer, "optimizer_step": _optimizer_step(inner),
            "update_masks": {n: m.clone() for n, m in engine.rules.masks.items()}}


def restore_training_state(engine: Any, state: TrainingState, sample_input: torch.Tensor) -> None:
    """Collective: puts ``state`` (from ``capture_training_state``, possibly captured at
    another ZeRO stage, world size or engine) into a freshly built engine, so that training
    continues exactly as if it had never been interrupted. ``sample_input`` is one batch
    for this rank, used only to run the zero-gradient step that makes a lazy optimizer
    allocate its state."""
    _check_fits(engine, state)
    inner = _inner_optimizer(engine)
    saved_keys = sorted({k for entry in state["optimizer"].values() for k in entry})
    if saved_keys and not held_state_keys(inner):
        _materialise_optimizer_state(engine, sample_input)
    have = held_state_keys(inner)
    if saved_keys and (sorted(have) != saved_keys or
                       (state["optimizer_step"] is None) != (_optimizer_step(inner) is None)):
        raise ValueError(f"training state has optimizer state {saved_keys}, but this engine's "
                         f"optimizer keeps {have}: was it captured with another optimizer?")
    with engine.gathered() as params:  # writes the module's copy and the fp32 master alike
        for name, value in params.items():
            value.copy_(state["params"][name].to(value.device))
    for name in set(engine.rules.masks) | set(state.get("update_masks", {})):
        engine.update_mask(name, state.get("update_masks", {}).get(name))
    if not saved_keys:  # never stepped: make a stepped engine's state act as a fresh one's
        _reset_to_unstepped(engine, inner, have)
        return
    for name, entry in state["optimizer"].items():
        for key, value in entry.items():
            _set_state(engine, inner, engine.named[name], key, value)
    _set_optimizer_step(inner, state["optimizer_step"])


def _inner_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The torch optimizer that holds the state: ZeRO>=1 wraps it (and keys its state by
    flat fp32 partitions); at ZeRO-0 and in the plain engine it is the optimizer itself."""
    return engine.inner_optimizer


def _get_state(engine: Any, inner: torch.optim.Optimizer, param: nn.Parameter,
               key: str) -> Optional[torch.Tensor]:
    if engine.zero_stage == 0:
        return inner.state.get(param, {}).get(key)
    from deepspeed.utils import safe_get_full_optimizer_state

    return safe_get_full_optimizer_state(param, key)  # all-gathers this parameter's slices


def _set_state(engine: Any, inner: torch.optim.Optimizer, param: nn.Parameter, key: str,
               value: torch.Tensor) -> None:
    with torch.no_grad():
        if engine.zero_stage >= 1:
            set_full_fp32(param, value.to(engine.device), key)
        elif key in inner.state.get(param, {}):
            inner.state[param][key].copy_(value)
        else:
            raise ValueError(f"parameter {_name_of(engine, param)!r} has no optimizer state "
                             f"{key!r} to restore into")


def _optimizer_step(inner: torch.optim.Optimizer) -> Optional[int]:
    """Adam's step count, one for all parameters (they all step together here)."""
    steps = {float(entry["step"]) for entry in inner.state.values() if "step" in entry}
    if len(steps) > 1:
        raise ValueError(f"optimizer state has differing step counts {sorted(steps)}; "
                         "a training state keeps one")
    return int(steps.pop()) if steps else None


def _set_optimizer_step(inner: torch.optim.Optimizer, step: Optional[int]) -> None:
    """Write ``step`` into every state entry, keeping its type (torch Adam: a 0-dim float32
    tensor; some optimizers keep an int)."""
    if step is None:
        return
    for entry in inner.state.values():
        if "step" in entry:
            old = entry["step"]
            if torch.is_tensor(old):
                old.fill_(step)
            else:
                entry["step"] = type(old)(step)


def _materialise_optimizer_state(engine: Any, sample_input: torch.Tensor) -> None:
    """torch and ZeRO allocate optimizer state in the first step; take one with a zero
    gradient (forward is collective at ZeRO-3, as restore is). The parameters and state
    it touches are all overwritten next. The forward runs in eval mode, so training-time
    forward hooks (a strategy's activity statistics) never see this dummy batch."""
    was_training = engine.module.training
    engine.module.eval()
    try:
        out = engine(sample_input.to(engine.device))
    finally:
        engine.module.train(was_training)
    engine.backward(out.sum() * 0)
    engine.step()


def _reset_to_unstepped(engine: Any, inner: torch.optim.Optimizer, keys: list[str]) -> None:
    """Zero state and step 0 act as no state for torch Adam (its first step starts from
    exactly these) and SGD without dampening (momentum * 0 + grad = grad)."""
    for param in engine.named.values():
        for key in keys:
            value = _get_state(engine, inner, param, key)
            if value is not None:
                _set_state(engine, inner, param, key, torch.zeros_like(value))
    _set_optimizer_step(inner, 0)


def _check_fits(engine: Any, state: TrainingState) -> None:
    """Fail before touching the engine (and before any collective) if the names or shapes
    differ: a resume into another model must not half-succeed."""
    missing = [k for k in ("params", "optimizer", "optimizer_step") if k not in state]
    if missing:
        raise ValueError(f"not a training state: no {', '.join(missing)}")
    names = set(engine.named)
    absent = sorted(names - set(state["params"]))
    unknown = sorted((set(state["params"]) | set(state["optimizer"])
                      | set(state.get("update_masks", {}))) - names)
    if absent or unknown:
        parts = [f"missing parameter {', '.join(map(repr, absent))}" if absent else "",
                 f"unknown parameter {', '.join(map(repr, unknown))}" if unknown else ""]
        raise ValueError("training state does not fit this model: " + "; ".join(p for p in parts if p))
    for name, mask in state.get("update_masks", {}).items():
        engine.rules.checked_mask(name, mask)  # ValueError for a bad shape or value
    for name, param in engine.named.items():
        shape = tuple(_full_shape(param))
        tensors = [state["params"][name], *state["optimizer"].get(name, {}).values()]
        for value in tensors:
            if tuple(value.shape) != shape:
                raise ValueError(f"parameter {name!r}: training state has shape "
                                 f"{tuple(value.shape)}, this model {shape}")


def _full_shape(param: nn.Parameter) -> torch.Size:
    return param.ds_shape if hasattr(param, "ds_shape") else param.shape  # ZeRO-3 partitions


def _name_of(engine: Any, param: nn.Parameter) -> str:
    return next((n for n, p in engine.named.items() if p is param), "?")
