"""The strategy contract: the one extension point of lifelong.

A strategy is a class with a typed ``Config`` (its OmegaConf schema), a registry
``name``, and any of the hooks below. It never touches DeepSpeed or
torch.distributed: the platform hands it a ``StrategyContext`` whose parameter,
gradient and collective operations are correct at every engine and ZeRO stage the
platform lets it run on. A strategy states what it has been *proven* correct on
(``support``); the platform refuses anything else before compute.

How a strategy says what may move: ``ctx.update_mask(name, mask)``. The optimizer step
(a fused kernel, lifelong/kernels) honours it exactly, at every ZeRO stage and world size:

- ``mask`` holds values in [0, 1], shaped like the parameter (elements), ``(shape[0],)``
  (rows: a unit's incoming weights and bias; one expert of a stacked ``(experts, ...)``
  tensor) or ``()`` (the whole tensor); ``None`` removes it. It holds until changed, and
  checkpoints carry it.
- ``0`` freezes: the entry *and* its optimizer state (momentum, Adam's moments) are
  bit-identical after every step, weight decay included -- zeroing a gradient is not
  freezing. Frozen rows cost nothing: the kernels skip them, and a Linear layer's
  backward skips their weight gradient (which then reads 0, platform/frozen_rows.py).
- ``s`` in (0, 1] scales: the entry moves by ``s`` times the dense step's change (its
  optimizer state updates as in the dense step).
- Every rank must set the same masks (compute them from reduced statistics).

``ctx.set_pull(name, lam, curvature, offset)`` adds ``lam * (curvature * theta - offset)``
to the gradient inside the same fused step: any sum of diagonal quadratic penalties
``lam/2 * F_t (theta - theta*_t)^2`` (EWC) with ``curvature = sum F_t``, ``offset = sum
F_t theta*_t``, at no extra pass over the parameters.

Where the strategies plug in:
- EWC: ``on_task_end`` estimates Fisher F and anchor theta*, and sets the pull.
- Continual backprop, ReDo: ``wrap_model`` adds activity trackers (forward hooks);
  ``after_step`` re-initialises units inside ``ctx.gathered()`` and calls
  ``ctx.reset_optimizer_state(name, mask)`` for their rows (a local write on each rank).
- GateON (lifelong/strategies/gateon.py): ``wrap_model`` returns a ``Contextual`` model
  (context gates around the stack) and ``context`` says which context each row runs in;
  unit availability A becomes the rows' update scale, ``ctx.update_mask(weight, A)``
  (A = 0: frozen), committed at a context switch with ``ctx.reset_optimizer()``.
- MoE routing: experts are pre-allocated stacked tensors; ``ctx.update_mask(experts, m)``
  with ``m`` 0 for unused and finished experts, 1 for the ones training now.
- Hypernetwork CL: ``wrap_model`` returns a module whose target weights come from
  h(task embedding); the embeddings tensor's mask is 1 on the current task's row only;
  ``loss_terms`` adds beta * sum ||h(e_t') - h*(e_t')||^2 over past tasks.
- Replay and joint training change *what* is trained on: ``augment_batch`` adds rows
  to each step; ``train_on`` says which tasks' rows make up a task's training set (it
  runs where the stream lives, the stream actor, so it is a pure function of the index).

A runnable example that freezes and scales: strategy_examples/freeze_strategy.py.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Literal, Optional, Protocol, Sequence

import torch
from torch import nn

from lifelong.platform.config import RunConfig, StrategyConfig
from lifelong.streams.batches import Batch, Rows, Samples
from lifelong.streams.scenarios import TaskInfo


@dataclass(frozen=True)
class Support:
    """Where a strategy has been shown correct (same accuracy matrix as 1 plain worker)."""

    zero_stages: frozenset[int] = frozenset({0})
    multi_worker: bool = False
    reason: str = "not yet proven equivalent to a single plain worker"

    @staticmethod
    def everywhere() -> "Support":
        """Proven at ZeRO stages 0-3 on several workers (cite the test that shows it)."""
        return Support(zero_stages=frozenset({0, 1, 2, 3}), multi_worker=True, reason="")


class StrategyContext(Protocol):
    """What the platform offers a strategy; every call is valid at the supported stages."""

    rank: int
    world_size: int
    seed: int  # the run's seed, the same on every rank: seed strategy-owned generators from it
    n_tasks: int  # tasks in the stream (task-aware strategies size per-task state by it)
    batch_size: int  # the global training batch: rows per step on all workers together;
    # rank r holds rows [offset, offset + len) of it, offset = sum of the earlier ranks'
    # parts of torch.arange(batch_size).tensor_split(world_size)

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Trainable parameters by name (may be partitioned: use the full_* calls for values)."""

    def full_params(self, names: Optional[Sequence[str]] = None) -> dict[str, torch.Tensor]:
        """Full fp32 parameter values (all, or just ``names``), read-only. Collective at
        ZeRO-3: every rank asks for the same names."""

    def editable_grads(self) -> AbstractContextManager[dict[str, torch.Tensor]]:
        """Full averaged gradients; edits made inside the block are written back."""

    def gathered(self, names: Optional[Sequence[str]] = None) -> AbstractContextManager[dict[str, torch.Tensor]]:
        """Full parameters (all, or just ``names``); edits made inside the block are written
        back on every rank, so every rank must make the same edits (draw random values from
        a generator seeded alike on every rank)."""

    def reset_optimizer_state(self, name: str, mask: Optional[torch.Tensor] = None) -> None:
        """Zero optimizer state (momentum, Adam moments) of ``name`` where ``mask`` is True."""

    def reset_optimizer(self) -> None:
        """A fresh optimizer from the next step: every parameter's state zeroed, step counts
        included (a local write on each rank)."""

    def update_mask(self, name: str, mask: Optional[torch.Tensor]) -> None:
        """How ``name`` may move from now on: 0 frozen, s in (0, 1] scaled (module docstring)."""

    def update_masks(self) -> dict[str, torch.Tensor]:
        """The masks in force, by parameter name, as they were given."""

    def set_pull(self, name: str, lam: float, curvature: Optional[torch.Tensor],
                 offset: Optional[torch.Tensor]) -> None:
        """Add ``lam * (curvature * theta - offset)`` to ``name``'s gradient in the fused step
        (full-shape tensors, the same on every rank); ``None`` removes the pull. The platform
        keeps the tensors without copying where it can: to change them, call again with new
        ones rather than editing them in place."""

    def reduce(self, tensor: torch.Tensor, op: Literal["sum", "mean"] = "sum") -> torch.Tensor:
        """All-reduce across workers (identity on one worker)."""

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every worker's tensor, in rank order."""

    def batches(self, data: Rows, batch_size: int, shuffle_seed: Optional[int] = None) -> Iterator[Batch]:
        """This worker's shard of ``data`` as float batches (no shuffle unless a seed is given)."""

    def logits_fn(self, params: dict[str, torch.Tensor], x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Pure function of explicit params (for torch.func): the model's masked logits."""


class Strategy:
    """Base class: every hook is optional and defaults to 'do nothing'."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    support: ClassVar[Support] = Support()

    def __init__(self, config: StrategyConfig, ctx: StrategyContext) -> None:
        self.config = config
        self.ctx = ctx

    @classmethod
    def check_config(cls, config: StrategyConfig) -> None:
        """Refuse bad option values at config time, before any compute (raise ConfigError)."""

    @classmethod
    def check_run(cls, config: StrategyConfig, run: "RunConfig") -> None:
        """Refuse options that cannot work with the rest of the run (its stream, its model),
        at config time (raise ConfigError)."""

    # -- architecture ------------------------------------------------------------
    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Change the architecture before the engine is built (gates, experts, ...)."""
        return model

    # -- context (models that take one: wrap_model returned a platform.model.Contextual) --
    def context(self, task: torch.Tensor) -> Optional[torch.Tensor]:
        """Each row's context id, from its task id (task-aware) or from the strategy's own
        state (task-free); used at every forward of a Contextual model, evaluation included
        unless ``eval_contexts`` says otherwise."""
        return task

    def eval_contexts(self) -> Optional[Sequence[int]]:
        """Task-free strategies: the contexts evaluation tries on each task's test set, which
        then takes the one with the lowest loss there (``None``: rows run in ``context``)."""
        return None

    def on_eval_contexts(self, chosen: list[int]) -> None:
        """The context each task's test set took, after an evaluation that tried several."""

    def inferred_contexts(self) -> Optional[Sequence[int]]:
        """Task-free strategies whose model infers each row's context from the row itself
        (given ``Contextual.INFER``): the context each task trained in, by task (-1: not yet
        trained). Evaluation then runs every test row with INFER and passes, per task, the
        share of rows inferred right to ``on_task_inference``. None: rows run in ``context``
        (or ``eval_contexts``)."""
        return None

    def on_task_inference(self, accuracy: list[float]) -> None:
        """Per task evaluated: the share of its test rows whose context was inferred right."""

    # -- data ----------------------------------------------------------------------
    @classmethod
    def train_on(cls, task_index: int) -> Sequence[int]:
        """Which tasks' training rows make up the training set while learning ``task_index``
        (joint training: all so far). Evaluated by the stream actor, not on the learner."""
        return [task_index]

    def augment_batch(self, batch: Batch) -> Batch:
        """Add rows to a training batch (replay), after the batch's own rows: the first
        ``len(batch)`` rows are the current task's (its online accuracy is measured on them)."""
        return batch

    # -- per step --------------------------------------------------------------------
    def loss_terms(self, batch: Batch, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra named losses; the platform adds them to the task loss and logs each."""
        return {}

    def transform_grads(self) -> dict[str, float]:
        """Edit gradients (via ``ctx.editable_grads()``) before the optimizer step.
        Returns scalars worth logging (may be empty)."""
        return {}

    def after_step(self, batch: Batch) -> dict[str, float]:
        """After the optimizer step (parameter edits: unit resets, perturbations); ``batch``
        is the current task's rows only. Returns scalars worth logging (may be empty)."""
        return {}

    # -- task boundaries ---------------------------------------------------------------
    def on_task_start(self, task: TaskInfo) -> None:
        """Before the first step on ``task``."""

    def on_task_end(self, task: TaskInfo, data: Rows) -> None:
        """After the last step on ``task``; ``data`` is its training rows (indexable; rows
        are fetched from the stream when indexed, so take the subset you need)."""

    # -- reporting -----------------------------------------------------------------------
    def task_metrics(self, task: TaskInfo) -> dict[str, float]:
        """Scalars logged after ``on_task_end`` and the evaluation that follows it (so they
        may report on it, e.g. ``on_task_inference``), with step = the task index."""
        return {}

    def matrices(self) -> dict[str, "Matrix"]:
        """Small named matrices logged with the run's figures: as JSON and as a heatmap PNG."""
        return {}

    # -- resume --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume at a task boundary, as tensors, numbers, strings,
        lists, tuples and dicts (checkpoints load with weights_only=True). It must be the same
        on every rank, as the sharding tests prove for the built-ins: rank 0's is saved."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"strategy {self.name!r} has no state to load")


@dataclass
class Matrix:
    """A matrix a strategy reports, e.g. steps spent in each context per task."""

    values: list[list[float]]
    row_label: str
    column_label: str
    title: str = ""


@dataclass
class ParamSnapshot:
    """Named tensors detached from the graph: anchors, Fisher diagonals, buffers."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @staticmethod
    def of(values: dict[str, torch.Tensor]) -> "ParamSnapshot":
        return ParamSnapshot({k: v.detach().clone() for k, v in values.items()})
