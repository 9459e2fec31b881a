"""Elastic Weight Consolidation (Kirkpatrick et al. 2017), separate and online.

After each task, the diagonal empirical Fisher F_t (mean over training rows of the
squared per-row gradient of the log-likelihood) and the anchor theta*_t are stored.
Training then adds lam * F * (theta - theta*) to the full gradient, i.e. descends on
task loss + lam/2 * sum F (theta - theta*)^2.

- ``separate``: one penalty per past task: sum_t F_t (theta - theta*_t).
- ``online`` (Schwarz et al. 2018, "Progress & Compress"): one penalty with
  F <- decay * F + F_t and the anchor at the latest theta*.

Either way the penalty gradient is  lam * (S * theta - A)  with running sums
S = sum F_t and A = sum F_t theta*_t, so a step costs the same after 1 or 100 tasks. It
is handed to the platform as a pull (``ctx.set_pull``): the fused optimizer step adds it
to the gradient in the same pass over memory that applies the update.

F_t is exact and, by default, over *all* of the task's training rows
(``fisher_samples: null``; an integer takes a seeded subset): ``fisher.py`` sums squared
per-row gradients in closed form (one matmul per Linear layer) instead of materialising a
gradient per row, so the whole task costs about what a hand-written loop's squared
mean-batch gradients (an approximation) cost. Each worker sums its shard of the rows and
the sums are all-reduced, so F_t is the same on any number of workers and ZeRO stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from lifelong.platform.config import StrategyConfig
from lifelong.platform.errors import require
from lifelong.strategies.base import Strategy, Support
from lifelong.strategies.fisher import squared_row_grad_sums
from lifelong.streams.batches import Rows
from lifelong.streams.scenarios import TaskInfo


@dataclass
class EWCConfig(StrategyConfig):
    lam: float = 100.0
    mode: str = "separate"  # separate | online
    decay: float = 1.0  # online mode: how much of the old Fisher to keep per task
    fisher_samples: Optional[int] = None  # training rows used for F; None = all of them
    fisher_batch_size: int = 1024  # rows per Fisher forward/backward


class EWC(Strategy):
    name = "ewc"
    description = "elastic weight consolidation: Fisher-weighted pull to past optima"
    Config = EWCConfig
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py

    @classmethod
    def check_config(cls, config: EWCConfig) -> None:  # type: ignore[override]
        require(config.mode in ("separate", "online"), "strategy.mode",
                f"{config.mode!r} is not one of separate, online")
        require(config.lam >= 0, "strategy.lam", f"must be >= 0, got {config.lam}")
        require(0.0 <= config.decay <= 1.0, "strategy.decay", f"must be in [0, 1], got {config.decay}")
        require(config.fisher_samples is None or config.fisher_samples >= 1, "strategy.fisher_samples",
                f"must be >= 1 or null, got {config.fisher_samples}")
        require(config.fisher_batch_size >= 1, "strategy.fisher_batch_size",
                f"must be >= 1, got {config.fisher_batch_size}")

    def __init__(self, config: EWCConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.check_config(config)
        self.fisher_sum: dict[str, torch.Tensor] = {}  # S
        self.anchor_sum: dict[str, torch.Tensor] = {}  # A
        self.last_fisher: dict[str, torch.Tensor] = {}

    def on_task_end(self, task: TaskInfo, data: Rows) -> None:
        fisher = self.estimate_fisher(task, data)
        params = {n: p.detach().clone() for n, p in self.ctx.full_params().items()}
        self.last_fisher = fisher
        if self.config.mode == "online" and self.fisher_sum:
            decay = self.config.decay
            self.fisher_sum = {n: decay * self.fisher_sum[n] + fisher[n] for n in fisher}
        else:
            self.fisher_sum = {n: self.fisher_sum.get(n, 0) + fisher[n] for n in fisher}
        if self.config.mode == "online":
            self.anchor_sum = {n: self.fisher_sum[n] * params[n] for n in fisher}
        else:
            self.anchor_sum = {n: self.anchor_sum.get(n, 0) + fisher[n] * params[n] for n in fisher}
        self._pull()

    def _pull(self) -> None:
        for name, curvature in self.fisher_sum.items():
            self.ctx.set_pull(name, self.config.lam, curvature, self.anchor_sum[name])

    def estimate_fisher(self, task: TaskInfo, data: Rows) -> dict[str, torch.Tensor]:
        """Exact empirical Fisher diagonal over (a seeded subset of) ``data``, all workers."""
        n = self.config.fisher_samples
        if n is not None and n < len(data):
            g = torch.Generator().manual_seed(task.index)
            data = data[torch.randperm(len(data), generator=g)[:n].sort().values]
        params = {k: v.detach() for k, v in self.ctx.full_params().items()}

        def row_losses(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                       t: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self.ctx.logits_fn(p, x, t), y, reduction="none")

        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for batch in self.ctx.batches(data, self.config.fisher_batch_size):
            if len(batch) == 0:
                continue
            for k, v in squared_row_grad_sums(row_losses, params, batch.x, batch.y, batch.task).items():
                total[k] += v
        count = float(len(data))
        return {k: self.ctx.reduce(v) / count for k, v in total.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"fisher_sum": self.fisher_sum, "anchor_sum": self.anchor_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher_sum, self.anchor_sum = state["fisher_sum"], state["anchor_sum"]
        self._pull()
