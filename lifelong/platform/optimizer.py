"""The optimizer every engine steps: SGD(-momentum), Adam or AdamW in one fused pass over
memory (``lifelong.kernels``), one kernel call per param group and step, following the
update plans of ``update_rules``.

It is a ``torch.optim.Optimizer``, so DeepSpeed wraps it at ZeRO 1-3 like any client
optimizer and hands it flat fp32 partitions; its state has torch's keys and layout
(``momentum_buffer``; ``step``, ``exp_avg``, ``exp_avg_sq``), so DeepSpeed's optimizer-state
accessors and lifelong's checkpoints read it as they read torch's.

Why not torch's optimizers with masked gradients: a zero gradient does not freeze. Momentum,
Adam's moments and weight decay keep moving a "frozen" entry. Here a frozen entry is never
written, and a frozen row costs nothing (the kernels skip it).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from lifelong.kernels import Kernels
from lifelong.kernels.reference import UpdateItem
from lifelong.platform.config import OptimConfig
from lifelong.platform.update_rules import UpdatePlan

PlanSource = Callable[[], dict[int, UpdatePlan]]


class FusedOptimizer(torch.optim.Optimizer):
    def __init__(self, params: Iterable[torch.Tensor], cfg: OptimConfig, kernels: Kernels) -> None:
        defaults = dict(lr=cfg.lr, momentum=cfg.momentum if cfg.name == "sgd" else 0.0,
                        weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        super().__init__(params, defaults)
        self.kind = cfg.name  # sgd | adam | adamw
        self.kernels = kernels
        self.plans: PlanSource = dict  # the engine points this at its UpdateRules

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = self.plans()
        for group in self.param_groups:
            items, steps = [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                item = self._item(param, group, plans.get(id(param)))
                if item is not None:
                    items.append(item)
                    steps.append(self.state[param].get("step"))
            self._update(items, steps, group)
        return loss

    def _item(self, param: torch.Tensor, group: dict, plan: Optional[UpdatePlan]) -> Optional[UpdateItem]:
        """``param``'s share of this step (its state made and counted as torch's optimizers
        do), or None when its plan freezes all of it: no kernel call at all."""
        state = self.state[param]
        if self.kind == "sgd":
            if group["momentum"] and "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param)  # = torch's clone on step 1
        else:
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(param)  # torch's shapes: checkpoints read them
                state["exp_avg_sq"] = torch.zeros_like(param)
            state["step"] += 1  # one count per tensor, frozen entries or not
        if plan is not None and plan.frozen:
            return None
        flat, grad = param.view(-1), param.grad.reshape(-1)
        masking = _masking(plan)
        if self.kind == "sgd":
            buf = state.get("momentum_buffer")
            return UpdateItem(flat, grad, momentum_buffer=None if buf is None else buf.view(-1), **masking)
        return UpdateItem(flat, grad, exp_avg=state["exp_avg"].view(-1),
                          exp_avg_sq=state["exp_avg_sq"].view(-1), **masking)

    def _update(self, items: list[UpdateItem], steps: list[Optional[torch.Tensor]], group: dict) -> None:
        """One kernel call for the group; Adam's tensors step together while their step
        counts agree (they do unless a tensor joined the group late: then one call each)."""
        if not items:
            return
        if self.kind == "sgd":
            self.kernels.sgd_update_many(items, lr=group["lr"], momentum=group["momentum"],
                                         weight_decay=group["weight_decay"])
            return
        beta1, beta2 = group["betas"]
        hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                     weight_decay=group["weight_decay"], decoupled=self.kind == "adamw")
        counts = [int(step) for step in steps]
        if all(count == counts[0] for count in counts):
            self.kernels.adam_update_many(items, step=counts[0], **hyper)
            return
        for item, count in zip(items, counts):
            self.kernels.adam_update_many([item], step=count, **hyper)


def _masking(plan: Optional[UpdatePlan]) -> dict:
    if plan is None:
        return {}
    pull = None if plan.curvature is None else (1.0, plan.curvature, plan.offset)
    return {"scale": plan.scale, "spans": plan.spans, "pull": pull}
