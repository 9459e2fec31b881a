"""Engines: who owns the model, the optimizer and the data-parallel mechanics.

``DeepSpeedEngine`` is the production learner (ZeRO stage 0-3); ``TorchEngine`` is the
plain single-worker reference the sharding tests compare against. Both expose the
same small surface, which is all that ``PlatformContext`` (and so every strategy) uses.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from lifelong.kernels import select
from lifelong.platform import frozen_rows
from lifelong.platform.config import EngineConfig, OptimConfig
from lifelong.platform.model import model_args
from lifelong.platform.optimizer import FusedOptimizer
from lifelong.platform.partition_layout import Layout, whole_layout, zero3_layout, zero12_layout
from lifelong.platform.update_rules import UpdateRules, reset_state

OPTIMIZER_STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


def build_optimizer(cfg: OptimConfig, params: Iterator[nn.Parameter], device: torch.device | str,
                    kernels: str = "auto") -> FusedOptimizer:
    return FusedOptimizer(params, cfg, select(device, kernels))


class MaskedUpdates:
    """Update masks and pulls (``update_rules``), followed by the fused optimizer on this
    rank's partition layout; and per-entry optimizer-state resets on the same layout."""

    module: nn.Module
    named: dict[str, nn.Parameter]
    inner_optimizer: FusedOptimizer  # the optimizer that holds the state and steps

    def _init_rules(self) -> None:
        shapes = {n: getattr(p, "ds_shape", p.shape) for n, p in self.named.items()}
        self.rules = UpdateRules(shapes)
        self._layout: Optional[Layout] = None
        self.inner_optimizer.plans = lambda: self.rules.plans(self.layout)

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = self._build_layout()
        return self._layout

    def _build_layout(self) -> Layout:
        return whole_layout(self.named)

    def update_mask(self, name: str, mask: Optional[torch.Tensor]) -> None:
        self.rules.set_mask(name, mask)
        frozen_rows.sync(self.module, name, self.rules.masks.get(name))

    def set_pull(self, name: str, lam: float, curvature: Optional[torch.Tensor],
                 offset: Optional[torch.Tensor]) -> None:
        self.rules.set_pull(name, lam, curvature, offset)

    def reset_optimizer_state(self, name: str, mask: Optional[torch.Tensor]) -> None:
        """Local: each rank zeroes the entries of ``name``'s state it holds, no collective."""
        if mask is not None:
            mask = mask.to("cpu", torch.bool).expand(self.rules.shapes[name])
        reset_state(self.inner_optimizer.state, OPTIMIZER_STATE_KEYS, self.layout[name], mask)

    def reset_optimizer(self) -> None:
        """A fresh optimizer: every state tensor this rank holds zeroed, step counts included
        (zero moments at step 0 are exactly torch's first step). Local, no collective."""
        for state in self.inner_optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()


class WholeParams(MaskedUpdates):
    """Parameter access for a module whose parameters, grads and optimizer state are whole
    on this process: the plain engine always, DeepSpeed at ZeRO-0."""

    module: nn.Module
    optimizer: torch.optim.Optimizer

    def full_params(self, names: Optional[Sequence[str]] = None) -> dict[str, torch.Tensor]:
        return {n: self.named[n].detach() for n in names or self.named}

    @contextmanager
    def editable_grads(self) -> Iterator[dict[str, torch.Tensor]]:
        yield {n: p.grad for n, p in self.named.items() if p.grad is not None}

    @contextmanager
    def gathered(self, names: Optional[Sequence[str]] = None) -> Iterator[dict[str, torch.Tensor]]:
        with torch.no_grad():
            yield {n: self.named[n].data for n in names or self.named}


class TorchEngine(WholeParams):
    """One process, plain torch: the unsharded reference."""

    zero_stage = 0
    device = torch.device("cpu")

    def __init__(self, module: nn.Module, optim: OptimConfig, kernels: str = "auto") -> None:
        self.module = module
        self.optimizer = self.inner_optimizer = build_optimizer(optim, module.parameters(),
                                                                self.device, kernels)
        self.named = dict(module.named_parameters())
        self._init_rules()

    def __call__(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.module(*model_args(self.module, x, context))

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class DeepSpeedEngine(WholeParams):
    """A DeepSpeed engine on the process group of the learner group (``env://``: gloo on CPU,
    NCCL on GPU)."""

    def __init__(self, module: nn.Module, optim: OptimConfig, engine: EngineConfig,
                 micro_batch_size: int) -> None:
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
        if accelerator == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
        _skip_shm_comm_op()
        deepspeed.init_distributed(dist_backend="nccl" if accelerator == "cuda" else "gloo")
        self.zero_stage = engine.zero_stage
        config = {
            "train_micro_batch_size_per_gpu": micro_batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 0.0,  # DeepSpeed's default (1.0) would clip silently
            "zero_optimization": {"stage": engine.zero_stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }
        self.inner_optimizer = build_optimizer(optim, module.parameters(), accelerator, engine.kernels)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=self.inner_optimizer,
                                                             config=config)
        self.module = self.ds.module
        self.device = self.ds.device
        self.named = dict(self.module.named_parameters())
        self._init_rules()
        # One worker at ZeRO-0 in fp32 without clipping: DeepSpeed's step is exactly the torch
        # optimizer's, and its per-step bookkeeping (timers, hooks, an all-reduce over one
        # rank) cost about 0.4 ms of a 2 ms step on the default experiment. Step directly.
        self.direct = self.zero_stage == 0 and torch.distributed.get_world_size() == 1
        if self.direct:
            self.ds.enable_backward_allreduce = False

    def __call__(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        args = model_args(self.module, x, context)
        return self.module(*args) if self.direct else self.ds(*args)

    def backward(self, loss: torch.Tensor) -> None:
        if self.direct:
            loss.backward()
        else:
            self.ds.backward(loss)

    def step(self) -> None:
        if self.direct:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.ds.step()

    def full_params(self, names: Optional[Sequence[str]] = None) -> dict[str, torch.Tensor]:
        from deepspeed.utils import safe_get_full_fp32_param

        if self.zero_stage < 3:
            # fp32 training: below ZeRO-3 every rank's module holds whole, current parameters
            # (ZeRO-1/2 all-gather the updated partitions into them after each step).
            return super().full_params(names)
        out = {}
        for name in names or self.named:  # every rank asks for the same names: a collective
            param = self.named[name]
            full = safe_get_full_fp32_param(param)
            out[name] = param.detach() if full is None else full
        return out

    @contextmanager
    def editable_grads(self) -> Iterator[dict[str, torch.Tensor]]:
        from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

        if self.zero_stage == 0:  # .grad already holds the full averaged gradient
            with super().editable_grads() as grads:
                yield grads
            return
        params = self.named
        grads = {n: safe_get_full_grad(p) for n, p in params.items()}
        grads = {n: g for n, g in grads.items() if g is not None}
        yield grads
        for name, grad in grads.items():
            if grad is not params[name].grad:  # a gathered copy: write it back
                safe_set_full_grad(params[name], grad)

    @contextmanager
    def gathered(self, names: Optional[Sequence[str]] = None) -> Iterator[dict[str, torch.Tensor]]:
        if self.zero_stage == 0:
            with super().gathered(names) as params:
                yield params
            return
        full = {n: v.clone() for n, v in self.full_params(names).items()}
        yield full
        with torch.no_grad():
            for name, value in full.items():
                set_full_fp32(self.named[name], value)  # the optimizer's fp32 master
                if self.zero_stage < 3:  # and the module's own whole copy, used by forward
                    self.named[name].data.copy_(value)
            if self.zero_stage == 3:  # and the module's partitions, which forward gathers
                import deepspeed

                edited = [self.named[name] for name in full]
                with deepspeed.zero.GatheredParameters(edited, modifier_rank=0):
                    for name, value in full.items():
                        self.named[name].data.copy_(value)

    def _build_layout(self) -> Layout:
        if self.zero_stage == 0:
            return whole_layout(self.named)
        if self.zero_stage == 3:
            return zero3_layout(self.named, self.optimizer, torch.distributed.get_rank())
        return zero12_layout(self.named, self.optimizer)


def _skip_shm_comm_op() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory op (about a minute, and again for
    every venv path, since the cache key includes it) that serves only its inference
    all-reduce; training collectives go through torch.distributed. Mark it unavailable, as
    DeepSpeed itself does where the compiler is missing, so it is never built."""
    import deepspeed.ops

    compatible = vars(deepspeed.ops).setdefault("__compatible_ops__", {})
    compatible["deepspeed_shm_comm"] = False


def held_state_keys(optimizer: torch.optim.Optimizer) -> list[str]:
    """The OPTIMIZER_STATE_KEYS this torch optimizer holds now (none before its first
    step), in one fixed order, so that every rank makes the same collective calls."""
    held = {key for state in optimizer.state.values() for key in state}
    return [key for key in OPTIMIZER_STATE_KEYS if key in held]


def set_full_fp32(param: nn.Parameter, value: torch.Tensor, optim_state_key: Optional[str] = None) -> None:
    """DeepSpeed's ``safe_set_full_fp32_param`` / ``safe_set_full_optimizer_state`` (ZeRO 1-3),
    except that at ZeRO-3 it writes this rank's slice through the local API: DeepSpeed 0.19's
    full setter narrows past the end of a parameter the world size does not divide."""
    from deepspeed.utils import (safe_set_full_fp32_param, safe_set_full_optimizer_state,
                                 safe_set_local_fp32_param, safe_set_local_optimizer_state)

    if not hasattr(param, "ds_id"):  # ZeRO 1/2
        if optim_state_key is None:
            safe_set_full_fp32_param(param, value)
        else:
            safe_set_full_optimizer_state(param, value, optim_state_key)
        return
    import deepspeed.comm as dist

    # The partition layout DeepSpeed's own setter uses, padded: rank r owns [r*n, (r+1)*n).
    group = getattr(param, "ds_process_group", None)
    n, rank = param.ds_tensor.numel(), dist.get_rank(group=group)
    padded = value.new_zeros(n * dist.get_world_size(group=group))
    padded[:value.numel()] = value.flatten()
    local = padded[rank * n:(rank + 1) * n]
    if optim_state_key is None:
        safe_set_local_fp32_param(param, local)
    else:
        safe_set_local_optimizer_state(param, local, optim_state_key)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of optimizer state this worker holds (ZeRO wraps the torch optimizer, whose
    state then covers only this worker's partition)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return sum(t.numel() * t.element_size() for state in inner.state.values()
               for t in state.values() if torch.is_tensor(t) and t.dim() > 0)


def build_engine(module: nn.Module, optim: OptimConfig, engine: EngineConfig,
                 micro_batch_size: int) -> "TorchEngine | DeepSpeedEngine":
    if engine.backend == "torch":
        return TorchEngine(module, optim, engine.kernels)
    return DeepSpeedEngine(module, optim, engine, micro_batch_size)
