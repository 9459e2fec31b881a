"""``PlatformContext``: the platform's side of the strategy contract.

Strategies see only this object. Parallel mechanics (which ZeRO stage, which
process group) stay behind it, so algorithm code reads the same on one laptop core
and on a sharded cluster.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Callable, Iterator, Literal, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call

from lifelong.platform.model import mask_logits, model_args
from lifelong.streams.batches import Batch, Featurizer, Samples, eval_batches, train_batches

if TYPE_CHECKING:
    from lifelong.platform.engine import DeepSpeedEngine, TorchEngine


class PlatformContext:
    def __init__(self, featurize: Featurizer, masks: Optional[torch.Tensor],
                 rank: int = 0, world_size: int = 1, seed: int = 0, n_tasks: int = 0,
                 batch_size: int = 0) -> None:
        self.featurize = featurize
        self.n_tasks = n_tasks
        self.batch_size = batch_size
        self.masks = masks
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self._engine: "TorchEngine | DeepSpeedEngine | None" = None
        self._skeleton: Optional[nn.Module] = None

    def attach(self, engine: "TorchEngine | DeepSpeedEngine", skeleton: nn.Module) -> None:
        """Called once the engine exists (after ``wrap_model``). ``skeleton`` is the model's
        architecture on the meta device: ``logits_fn`` runs it with explicit parameters, so
        it never meets partitioned (ZeRO-3) parameters and costs no memory."""
        self._engine = engine
        self._skeleton = skeleton
        self.context_of: Callable[[torch.Tensor], Optional[torch.Tensor]] = lambda task: None

    @property
    def engine(self) -> "TorchEngine | DeepSpeedEngine":
        if self._engine is None:
            raise RuntimeError("the engine is not built yet (called from wrap_model?)")
        return self._engine

    # -- parameters and gradients ------------------------------------------------------
    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.engine.module.named_parameters())

    def full_params(self, names: Optional[Sequence[str]] = None) -> dict[str, torch.Tensor]:
        return self.engine.full_params(names)

    def editable_grads(self) -> AbstractContextManager[dict[str, torch.Tensor]]:
        return self.engine.editable_grads()

    def gathered(self, names: Optional[Sequence[str]] = None) -> AbstractContextManager[dict[str, torch.Tensor]]:
        return self.engine.gathered(names)

    def reset_optimizer_state(self, name: str, mask: Optional[torch.Tensor] = None) -> None:
        self.engine.reset_optimizer_state(name, mask)

    def reset_optimizer(self) -> None:
        self.engine.reset_optimizer()

    def update_mask(self, name: str, mask: Optional[torch.Tensor]) -> None:
        self.engine.update_mask(name, mask)

    def update_masks(self) -> dict[str, torch.Tensor]:
        return dict(self.engine.rules.masks)

    def set_pull(self, name: str, lam: float, curvature: Optional[torch.Tensor],
                 offset: Optional[torch.Tensor]) -> None:
        self.engine.set_pull(name, lam, curvature, offset)

    # -- collectives ---------------------------------------------------------------------
    def reduce(self, tensor: torch.Tensor, op: Literal["sum", "mean"] = "sum") -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size if op == "mean" else out

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if self.world_size == 1:
            return [tensor]
        import torch.distributed as dist

        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor.contiguous())
        return out

    # -- data and functional forward ------------------------------------------------------
    def batches(self, data: Samples, batch_size: int,
                shuffle_seed: Optional[int] = None) -> Iterator[Batch]:
        if shuffle_seed is None:
            batches = eval_batches(data, self.featurize, batch_size, self.rank, self.world_size)
        else:
            batches = train_batches(data, self.featurize, batch_size, shuffle_seed, self.rank,
                                    self.world_size)
        device = self.engine.device
        return (b.to(device) for b in batches)

    def logits_fn(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                  task: torch.Tensor) -> torch.Tensor:
        assert self._skeleton is not None, "attach() first"
        args = model_args(self._skeleton, x, self.context_of(task))
        return mask_logits(functional_call(self._skeleton, params, args), task, self.masks)
