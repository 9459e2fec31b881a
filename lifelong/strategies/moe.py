"""MoE routing for continual learning: a pool of experts per hidden layer, a router per
context, the most-used experts frozen after each task (MoE-Adapters4CL, CVPR 2024), and,
task-free, Expert Gate's autoencoder gates to infer the context at test time.

- **Experts are allocated up front** (``experts`` per layer; DeepSpeed's optimizer groups
  are fixed when the engine is built). Each task activates ``per_task`` fresh ones; its
  router may choose among every expert active by then, frozen ones included. Experts not
  yet active are frozen through the masked-update facility, so they cost no update.
- **Routing** is noisy top-k (``routing.py``): Gaussian noise of std ``noise`` on the
  router logits while training (drawn per row of the global batch, so any number of
  workers route alike), the k best win.
- **Freezing.** After each task, in every layer, the ``freeze`` experts that took the most
  routing mass (summed gates) on its rows are frozen, with its router row and (with
  ``freeze_head``) its classes' output rows: bit-identical from then on, optimizer state
  included. The optimizer restarts at each task.
- **Losses** (``loss_terms``): a load-balance loss (``switch``: E sum_i f_i P_i, or
  ``cv2`` of the routing mass) times ``balance``, and the router z-loss times ``z_loss``,
  summed over layers, each from the whole global batch's statistics.
- **Task-free** (``routing=free``): the context is the task slot while training (task
  boundaries are used, as in Expert Gate and MoE-Adapters4CL); at test time no task id is
  given: each row's context is the one whose class autoencoders reconstruct it best
  (``subspace_gates.py``), and a context predicts only among the classes it was trained on.
  Evaluation reports how often the inferred context is the task's (task inference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from lifelong.platform.config import RunConfig, StrategyConfig
from lifelong.platform.errors import require
from lifelong.strategies.base import Matrix, Strategy, Support
from lifelong.strategies.experts import ExpertLayer, MoENet, RoutingTables
from lifelong.strategies.routing import cv2_surrogate, slot_counts, switch_balance, z_loss
from lifelong.strategies.subspace_gates import SubspaceGates, fit_classes
from lifelong.strategies.task_inference import expected_contexts, inference_matrix, latest_mean, record
from lifelong.streams.batches import Batch, Rows
from lifelong.streams.scenarios import TaskInfo


@dataclass
class MoEConfig(StrategyConfig):
    name: str = "moe"
    routing: str = "task"  # task: the router of the row's task | free: the context is inferred at test time
    experts: int = 10  # experts per hidden layer, allocated up front
    k: int = 2  # experts per row
    per_task: int = 2  # fresh experts each task activates
    freeze: int = 2  # experts per layer frozen after each task: its top ones by routing mass
    noise: float = 1.0  # std of the Gaussian noise on router logits while training (0: none)
    balance: float = 0.01  # weight of the load-balance loss
    balance_kind: str = "switch"  # switch: E sum_i f_i P_i | cv2: cv^2 of the routing mass
    z_loss: float = 0.001  # weight of the router z-loss
    freeze_head: bool = True  # a finished task's classes' output rows are frozen too
    gate_rank: int = 20  # free: principal directions of each class autoencoder
    gate_batch_size: int = 1024  # free: rows per pass when fitting the gates at a task's end


class MoE(Strategy):
    name = "moe"
    description = "MoE routing: experts, noisy top-k routers, freezing, task-free gates"
    Config = MoEConfig
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py

    @classmethod
    def check_config(cls, config: MoEConfig) -> None:  # type: ignore[override]
        require(config.routing in ("task", "free"), "strategy.routing", f"{config.routing!r} is not one of task, free")
        require(config.balance_kind in ("switch", "cv2"), "strategy.balance_kind",
                f"{config.balance_kind!r} is not one of switch, cv2")
        require(config.k >= 1, "strategy.k", f"must be >= 1, got {config.k}")
        require(config.k <= config.experts, "strategy.k",
                f"{config.k} is larger than the pool (strategy.experts={config.experts})")
        require(config.per_task >= config.k, "strategy.per_task",
                f"the first task can route only to its {config.per_task} fresh experts, fewer than "
                f"strategy.k={config.k}")
        require(0 <= config.freeze <= config.experts, "strategy.freeze",
                f"must be in [0, strategy.experts], got {config.freeze}")
        for key in ("noise", "balance", "z_loss"):
            require(getattr(config, key) >= 0, f"strategy.{key}", f"must be >= 0, got {getattr(config, key)}")
        require(config.gate_rank >= 1, "strategy.gate_rank", f"must be >= 1, got {config.gate_rank}")
        require(config.gate_batch_size >= 1, "strategy.gate_batch_size", f"must be >= 1, got {config.gate_batch_size}")

    @classmethod
    def check_run(cls, config: MoEConfig, run: RunConfig) -> None:  # type: ignore[override]
        needed = config.per_task * run.stream.n_tasks
        require(config.experts >= needed, "strategy.experts",
                f"the pool is smaller than needed: {run.stream.n_tasks} tasks x {config.per_task} fresh "
                f"experts (strategy.per_task) need {needed}, the pool has {config.experts}")
        require(bool(run.model.hidden), "model.hidden", "strategy 'moe' needs at least one hidden Linear layer")

    def __init__(self, config: MoEConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.check_config(config)
        self.free = config.routing == "free"
        self.slot = 0  # the context being trained: the task index
        self.active = 0  # experts [0, active) are in use
        self.usage: list[torch.Tensor] = []  # per task: [layers, E] routing slots
        self.mass: Optional[torch.Tensor] = None  # this task's [layers, E] routing mass
        self.inference: list[list[float]] = []  # per evaluation: task-inference accuracy per task
        self.trained: list[int] = []  # the context each task trained in

    # -- the model ---------------------------------------------------------------------------
    def wrap_model(self, model: nn.Module) -> nn.Module:
        require(isinstance(model, nn.Sequential), "strategy.name",
                f"strategy 'moe' needs the platform's flat nn.Sequential model, got {type(model).__name__}")
        linears = [m for m in model if isinstance(m, nn.Linear)]
        outputs, dim = linears[-1].out_features, _input_dim(model)
        require(not self.free or self.config.gate_rank < dim, "strategy.gate_rank",
                f"must be smaller than the {dim} values of a row (a class autoencoder of that rank "
                f"reconstructs every row), got {self.config.gate_rank}")
        gates = SubspaceGates(dim, self.config.gate_rank) if self.free else None
        self.tables = RoutingTables(self.ctx.n_tasks, self.config.experts, outputs, gates)
        self.tables.noise_std, self.tables.noise_seed = self.config.noise, self.ctx.seed
        parts = torch.arange(max(self.ctx.batch_size, 1)).tensor_split(self.ctx.world_size)
        self.tables.global_rows = self.ctx.batch_size
        self.tables.row_offset = sum(len(p) for p in parts[:self.ctx.rank])
        self.net = MoENet(model, self.config.experts, self.ctx.n_tasks, self.config.k, self.tables, self.ctx.seed)
        self.layers: list[tuple[str, ExpertLayer]] = self.net.expert_layers()
        self.frozen = torch.zeros(len(self.layers), self.config.experts, dtype=torch.bool)
        self.head = f"{self.net.body_prefix}{len(self.net.net) - 1}"
        self._activate(self.config.per_task)  # the first task's experts, for the evaluation before it
        return self.net

    def context(self, task: torch.Tensor) -> torch.Tensor:
        return torch.full_like(task, self.slot) if self.free else task

    def inferred_contexts(self) -> Optional[list[int]]:
        if not self.free:
            return None
        return expected_contexts(self.trained, self.ctx.n_tasks)

    def on_task_inference(self, accuracy: list[float]) -> None:
        record(self.inference, accuracy, self.trained)

    # -- per step --------------------------------------------------------------------------------
    def loss_terms(self, batch: Batch, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        routings = [layer.last for _, layer in self.layers]
        e = self.config.experts
        outputs = self.tables.owned.shape[1]
        local_mass = [torch.zeros(e, dtype=r.gates.dtype, device=r.gates.device).index_add(
            0, r.experts.flatten(), r.gates.flatten()) for r in routings]
        stats = torch.cat([slot_counts(r, e).cpu() for r in routings]
                          + [m.detach().double().cpu() for m in local_mass]
                          + [torch.bincount(batch.y.cpu(), minlength=outputs).double()])
        stats = self.ctx.reduce(stats)
        n = len(routings)
        counts, mass = stats[:n * e].view(n, e), stats[n * e:2 * n * e].view(n, e)
        self.tables.owned[self.slot] |= stats[2 * n * e:] > 0
        self.mass = mass if self.mass is None else self.mass + mass
        self._count(counts)
        allowed = self.tables.routable[self.slot]
        balance, zed = logits.new_zeros(()), logits.new_zeros(())
        for i, r in enumerate(routings):
            if self.config.balance_kind == "switch":
                share = counts[i] / counts[i].sum().clamp(min=1.0)
                balance = balance + switch_balance(r.probs, share.to(r.probs.device), int(allowed.sum()))
            else:
                loss, _ = cv2_surrogate(local_mass[i], mass[i].to(local_mass[i].device),
                                        allowed.to(local_mass[i].device), self.ctx.world_size)
                balance = balance + loss
            zed = zed + z_loss(r.logits)
        return {"moe/balance": self.config.balance * balance, "moe/router_z": self.config.z_loss * zed}

    def _count(self, counts: torch.Tensor) -> None:
        while len(self.usage) <= self.slot:
            self.usage.append(torch.zeros_like(counts))
        self.usage[self.slot] += counts

    def after_step(self, batch: Batch) -> dict[str, float]:
        self.tables.step += 1
        return {}

    # -- task boundaries -------------------------------------------------------------------------
    def on_task_start(self, task: TaskInfo) -> None:
        self.slot = task.index
        self._activate(self.config.per_task * (task.index + 1))
        self.mass = None
        self._apply_masks()
        self.ctx.reset_optimizer()

    def _activate(self, count: int) -> None:
        """Experts [0, count) are in use; the training context and those not trained yet
        (evaluated for forward transfer) may route to all of them."""
        self.active = min(count, self.config.experts)
        self.tables.routable[max(self.slot, 0):, :self.active] = True

    def on_task_end(self, task: TaskInfo, data: Rows) -> None:
        if self.mass is not None and self.config.freeze:
            top = self.mass.masked_fill(~self.tables.routable[self.slot], -1.0).topk(self.config.freeze, dim=1)
            for layer, experts in enumerate(top.indices):
                used = top.values[layer] > 0
                self.frozen[layer, experts[used]] = True
        if self.free:
            self._fit_gates(data)
        self.trained = self.trained[:task.index] + [self.slot]
        self.slot = -1  # no context trains until the next task starts
        self._apply_masks()

    def _fit_gates(self, data: Rows) -> None:
        gates = self.tables.gates
        assert gates is not None
        for batch in self.ctx.batches(data, self.config.gate_batch_size):
            if len(batch):
                gates.observe(batch.x.cpu(), batch.y.cpu())
        classes = fit_classes(gates.observed_classes(), self.tables.owned.shape[1], self.ctx.reduce)
        gates.fit(self.slot, classes, self.ctx.reduce)

    def _apply_masks(self) -> None:
        """Experts: active and not frozen train; router: the training context's row only;
        output rows of finished contexts' classes: frozen (``freeze_head``)."""
        for i, (prefix, _) in enumerate(self.layers):
            train = torch.zeros(self.config.experts, dtype=torch.bool)
            train[:self.active] = True
            train &= ~self.frozen[i]
            for name in ("weight", "bias"):
                self.ctx.update_mask(f"{prefix}.{name}", train.float())
            router = torch.zeros(self.ctx.n_tasks)
            if self.slot >= 0:
                router[self.slot] = 1.0
            for name in ("router_weight", "router_bias"):
                self.ctx.update_mask(f"{prefix}.{name}", router)
        if self.config.freeze_head:
            finished = [c for c in self.trained if c != self.slot]
            done = self.tables.owned[finished].any(0) if finished else torch.zeros(self.tables.owned.shape[1], dtype=torch.bool)
            mask = None if not bool(done.any()) else (~done).float()
            for name in ("weight", "bias"):
                self.ctx.update_mask(f"{self.head}.{name}", mask)

    # -- reporting -----------------------------------------------------------------------------------
    def task_metrics(self, task: TaskInfo) -> dict[str, float]:
        out = {"moe/experts_active": float(self.active),
               "moe/experts_frozen": float(self.frozen.sum(1).double().mean())}
        usage = self.usage[task.index] if task.index < len(self.usage) else None
        for i, (prefix, _) in enumerate(self.layers):
            out[f"moe/experts_frozen/{prefix}"] = float(self.frozen[i].sum())
            if usage is not None:  # experts that took at least 1% of this task's routing slots
                share = usage[i] / usage[i].sum().clamp(min=1.0)
                out[f"moe/experts_used/{prefix}"] = float((share >= 0.01).sum())
        inferred = latest_mean(self.inference, self.trained)
        if inferred is not None:
            out["moe/task_inference"] = inferred
        return out

    def matrices(self) -> dict[str, Matrix]:
        out: dict[str, Matrix] = {}
        for i, (prefix, _) in enumerate(self.layers):
            rows = [(u[i] / u[i].sum().clamp(min=1.0)).tolist() for u in self.usage]
            out[f"moe_routing_{prefix.replace('.', '_')}"] = Matrix(
                rows, "task", "expert", f"share of each task's routing slots per expert ({prefix})")
        if self.inference:
            out["moe_task_inference"] = inference_matrix(self.inference, self.trained)
        return out

    # -- resume --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        tables = self.tables
        return {"slot": self.slot, "active": self.active, "frozen": self.frozen.clone(),
                "usage": [u.clone() for u in self.usage], "inference": [list(r) for r in self.inference],
                "trained": list(self.trained), "routable": tables.routable.clone(), "owned": tables.owned.clone(),
                "step": tables.step, "gates": tables.gates.state_dict() if tables.gates is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.slot, self.active = int(state["slot"]), int(state["active"])
        self.frozen = state["frozen"].clone()
        self.usage = [u.clone() for u in state["usage"]]
        self.inference = [list(r) for r in state["inference"]]
        self.trained = list(state["trained"])
        self.tables.routable.copy_(state["routable"])
        self.tables.owned.copy_(state["owned"])
        self.tables.step = int(state["step"])
        if self.tables.gates is not None:
            self.tables.gates.load_state_dict(state["gates"])
        self._apply_masks()


def _input_dim(model: nn.Sequential) -> int:
    """Values per input row: the first layer's inputs (convs: the square image they unflatten)."""
    first = next(iter(model))
    if isinstance(first, nn.Linear):
        return first.in_features
    if isinstance(first, nn.Unflatten):
        return int(torch.Size(first.unflattened_size).numel())
    raise ValueError(f"strategy 'moe': cannot tell the input width of a model starting with {type(first).__name__}")
