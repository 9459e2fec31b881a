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
        # Per parameter, its item of the last step and what that item was made from: the
        # items (and the kernel's packed pointers) stay while nothing but the gradient,
        # new every step, changes, so a steady step does little Python work per tensor.
        self._items: dict[torch.Tensor, tuple[tuple, UpdateItem, Optional[UpdatePlan]]] = {}

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = self.plans()
        for group in self.param_groups:
            items, grads, steps, counted = [], [], [], []
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                state = self._state(param, group)
                if self.kind != "sgd":
                    counted.append(state["step"])  # one count per tensor, frozen entries or not
                plan = plans.get(id(param))
                if plan is not None and plan.frozen:
                    continue  # no kernel call at all
                items.append(self._item(param, state, plan))
                grads.append(grad)
                if self.kind != "sgd":
                    steps.append(state["step"])
            if counted:
                torch._foreach_add_(counted, 1)
            self._update(items, grads, steps, group)
        return loss

    def _state(self, param: torch.Tensor, group: dict) -> dict:
        """``param``'s state, made as torch's optimizers make it on the first step."""
        state = self.state[param]
        if self.kind == "sgd":
            if group["momentum"] and "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param)  # = torch's clone on step 1
        elif not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param)  # torch's shapes: checkpoints read them
            state["exp_avg_sq"] = torch.zeros_like(param)
        return state

    def _item(self, param: torch.Tensor, state: dict, plan: Optional[UpdatePlan]) -> UpdateItem:
        """``param``'s item (its gradient comes apart): the last step's, unless the plan,
        a state tensor (a loaded checkpoint) or the parameter's storage has changed."""
        buf, m, v = state.get("momentum_buffer"), state.get("exp_avg"), state.get("exp_avg_sq")
        made_from = (id(plan), id(buf), id(m), id(v), param.data_ptr())
        cached = self._items.get(param)
        if cached is not None and cached[0] == made_from:
            return cached[1]
        flat = (lambda t: None if t is None else t.view(-1))
        item = UpdateItem(flat(param), None, momentum_buffer=flat(buf), exp_avg=flat(m),
                          exp_avg_sq=flat(v), **_masking(plan))
        self._items[param] = (made_from, item, plan)  # holding what the ids name keeps them unique
        return item

    def _update(self, items: list[UpdateItem], grads: list[torch.Tensor], steps: list[torch.Tensor],
                group: dict) -> None:
        """One kernel call for the group; Adam's tensors step together while their step
        counts agree (they do unless a tensor joined the group late: then one call each)."""
        if not items:
            return
        if self.kind == "sgd":
            self.kernels.sgd_update_many(items, lr=group["lr"], momentum=group["momentum"],
                                         weight_decay=group["weight_decay"], grads=grads)
            return
        beta1, beta2 = group["betas"]
        hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                     weight_decay=group["weight_decay"], decoupled=self.kind == "adamw")
        counts = [int(c) for c in torch.stack(steps).tolist()]
        if all(count == counts[0] for count in counts):
            self.kernels.adam_update_many(items, step=counts[0], grads=grads, **hyper)
            return
        for item, grad, count in zip(items, grads, counts):
            self.kernels.adam_update_many([item], step=count, grads=[grad], **hyper)


def _masking(plan: Optional[UpdatePlan]) -> dict:
    if plan is None:
        return {}
    pull = None if plan.curvature is None else (plan.lam, plan.curvature, plan.offset)
    return {"scale": plan.scale, "spans": plan.spans, "pull": pull}
