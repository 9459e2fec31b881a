"""GateON (Barry, Bellec & Gerstner 2023/2025: "Context selectivity with dynamic
availability enables lifelong continual learning"; code: GATEONMNIST).

Each hidden layer's pre-activation is multiplied by a context gate g_l = ReTanh(U_l c)
(``gates.py``), so every context (a task, or a detected one) uses its own subset of units.
A unit's *availability* A in [0, 1] falls as it becomes relevant to the contexts being
learnt (``availability.py``); the units' incoming weights and biases then move only by
``A`` times their step: the committed A is their update mask, so A = 0 is an exact freeze,
optimizer state included. The output layer and the gates U are never obstructed. A is
committed, and the optimizer restarted, at each context switch: the task boundary
(``context=task``) or a detected one (``context=detect``, ``context_detection.py``).

Paper or code, where they differ (we follow the code unless said otherwise):
- eta = 0.01, eps = 0 (no re-activation) and the 0.05 availability threshold: the code's.
- U is ``nn.Linear(contexts, units)`` with a frozen zero bias in the code, so its init is
  torch's U(-1/sqrt(contexts), 1/sqrt(contexts)): ``gate_init`` = None does the same.
- Each hidden layer's output is scaled to unit L2 norm per row, as in the code
  (``normalize``). The code also applies BatchNorm before the ReLU; we leave it out: its
  batch statistics differ between workers, and one set of running statistics serves all
  contexts. The code's output layer is a softmax fed to CrossEntropyLoss (a double
  softmax); we use the platform's plain cross-entropy on logits.
- The code updates availability every training step, from the batch's relevance, and
  detection uses a per-context history of the last 49 losses; we use the last ``window``.
- Evaluation in ``context=detect``: the code is told the context at test time; we try
  every known context on each task's test set and keep the one with the lowest loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.platform.config import StrategyConfig
from lifelong.platform.errors import require
from lifelong.strategies.availability import (UNAVAILABLE_BELOW, UnitRelevance, normalised,
                                              parameter_relevance, update_availability)
from lifelong.strategies.base import Matrix, Strategy, Support
from lifelong.strategies.context_detection import ContextDetector, detection_scores
from lifelong.strategies.gates import GatedNet
from lifelong.strategies.units import HiddenLayer, hidden_layers
from lifelong.streams.batches import Batch, Rows
from lifelong.streams.scenarios import TaskInfo


@dataclass
class GateONConfig(StrategyConfig):
    mode: str = "n"  # n: availability per unit (n-GateON) | p: per weight and bias (p-GateON)
    eta: float = 0.01  # availability rate: A <- clip(A - eta * A * (r^ - eps), 0, 1)
    eps: float = 0.0  # re-activation: units with normalised relevance below eps regain A
    context: str = "task"  # task: one context per task id | detect: unsupervised switches
    gate_init: Optional[float] = None  # U ~ Uniform(-b, b); None: b = 1/sqrt(contexts) (the code)
    normalize: bool = True  # each hidden layer's output scaled to unit L2 norm per row (the code)
    contexts: int = 110  # detect: context slots (the code reserves about 110)
    ratio: float = 1.01  # detect: a switch is a loss above ratio x the context's recent mean
    window: int = 50  # detect: batches in that mean
    confident: float = 0.9  # detect: a context may switch away once its confidence exceeds this
    confidence_rate: float = 0.005  # detect: conf += rate * (1 - conf) per stable step


def loss_and_rows(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[summed cross-entropy, rows] in float64: one worker's share of a batch's mean loss,
    ready to be all-reduced."""
    loss = F.cross_entropy(logits.float(), y, reduction="sum").double()
    return torch.stack([loss, torch.tensor(float(len(y)), dtype=torch.float64, device=loss.device)])


class GateON(Strategy):
    name = "gateon"
    description = "GateON: context gates, relevance-driven unit availability, context detection"
    Config = GateONConfig
    support = Support.everywhere()  # tests/e2e/test_sharding_equivalence.py

    @classmethod
    def check_config(cls, config: GateONConfig) -> None:  # type: ignore[override]
        require(config.mode in ("n", "p"), "strategy.mode", f"{config.mode!r} is not one of n, p")
        require(config.context in ("task", "detect"), "strategy.context",
                f"{config.context!r} is not one of task, detect")
        require(config.eta > 0, "strategy.eta", f"must be > 0, got {config.eta}")
        require(config.eps >= 0, "strategy.eps", f"must be >= 0, got {config.eps}")
        require(config.gate_init is None or config.gate_init > 0, "strategy.gate_init",
                f"must be > 0 (or null for 1/sqrt(contexts)), got {config.gate_init}")
        require(config.contexts >= 1, "strategy.contexts", f"must be >= 1, got {config.contexts}")
        require(config.ratio >= 1.0, "strategy.ratio", f"must be >= 1, got {config.ratio}")
        require(config.window >= 1, "strategy.window", f"must be >= 1, got {config.window}")
        require(0.0 <= config.confident < 1.0, "strategy.confident",
                f"must be in [0, 1), got {config.confident}")
        require(0.0 < config.confidence_rate <= 1.0, "strategy.confidence_rate",
                f"must be in (0, 1], got {config.confidence_rate}")

    def __init__(self, config: GateONConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.check_config(config)
        self.detect = config.context == "detect"
        self.detector = ContextDetector(config.contexts, config.ratio, config.window,
                                        config.confident, config.confidence_rate)
        self.steps = 0
        self.task = 0
        self.boundaries: list[int] = []  # global step at which each task began (logging only)
        self.switches: list[int] = []  # global steps of detected switches
        self.usage: list[list[int]] = []  # steps per [task][context]
        self.eval_chosen: list[int] = []
        self._forced: Optional[int] = None  # a context being tried on the current batch
        self._loss: Optional[torch.Tensor] = None  # this worker's [loss sum, rows] of the step
        self._relevance: dict[str, torch.Tensor] = {}  # p-mode: this step's, by tensor

    # -- the model -------------------------------------------------------------------------
    def wrap_model(self, model: nn.Module) -> nn.Module:
        self.layers: list[HiddenLayer] = hidden_layers(model, "strategy 'gateon'", GatedNet.body_prefix)
        n = self.ctx.n_tasks if not self.detect else self.config.contexts
        bound = self.config.gate_init or 1.0 / math.sqrt(n)
        net = GatedNet(model, self.layers, n, bound, self.config.normalize, self.ctx.seed)
        params = dict(net.named_parameters())
        self.shapes = {name: params[name].shape for layer in self.layers for name in self._tensors(layer)}
        if self.config.mode == "n":
            self.unit_relevance = UnitRelevance(net.taps, [layer.n_units for layer in self.layers])
            self.available = {layer.name: torch.ones(layer.n_units, dtype=torch.float64)
                              for layer in self.layers}
        else:
            self.available = {name: torch.ones(shape, dtype=torch.float64) for name, shape in self.shapes.items()}
        self.committed = {k: v.clone() for k, v in self.available.items()}
        return net

    @staticmethod
    def _tensors(layer: HiddenLayer) -> list[str]:
        return [layer.in_weight(), layer.in_bias()]

    def context(self, task: torch.Tensor) -> torch.Tensor:
        if not self.detect:
            return task
        return torch.full_like(task, self.detector.current if self._forced is None else self._forced)

    def eval_contexts(self) -> Optional[list[int]]:
        return list(range(self.detector.known)) if self.detect else None

    def on_eval_contexts(self, chosen: list[int]) -> None:
        self.eval_chosen = list(chosen)

    # -- per step ----------------------------------------------------------------------------
    def loss_terms(self, batch: Batch, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.detect:
            self._loss = loss_and_rows(logits[:len(batch)].detach(), batch.y)
        return {}

    def transform_grads(self) -> dict[str, float]:
        if self.config.mode == "p":
            names = [n for layer in self.layers for n in self._tensors(layer)]
            params = self.ctx.full_params(names)
            with self.ctx.editable_grads() as grads:
                self._relevance = {}
                for layer in self.layers:
                    self._relevance.update(parameter_relevance(grads, params, self._tensors(layer)))
        return {}

    def after_step(self, batch: Batch) -> dict[str, float]:
        extra = None if self._loss is None else self._loss.cpu()
        if self.config.mode == "n":
            unit, reduced = self.unit_relevance.collect(self.ctx.reduce, extra)
            relevance = {layer.name: normalised(r) for layer, r in zip(self.layers, unit)}
        else:
            relevance = self._relevance
            reduced = None if extra is None else self.ctx.reduce(extra)
        switched = False
        if self.detect and reduced is not None:
            loss = float(reduced[0] / reduced[1].clamp(min=1.0))
            new = self.detector.observe(loss, lambda ks: self._try(ks, batch))
            if new is not None:  # this batch ran in the old context: its relevance is not used
                switched = True
                self.switches.append(self.steps)
                self._commit()
        if not switched:
            for key, r in relevance.items():
                update_availability(self.available[key], r, self.config.eta, self.config.eps)
        self._count_step()
        return {"gateon/context": float(self.detector.current)} if self.detect else {}

    def _try(self, contexts: list[int], batch: Batch) -> list[float]:
        """The current batch's loss (all workers) in each of ``contexts``."""
        params = self.ctx.full_params()
        sums = []
        try:
            for k in contexts:
                self._forced = k
                logits = self.ctx.logits_fn(params, batch.x, batch.task)
                sums.append(loss_and_rows(logits, batch.y))
        finally:
            self._forced = None
        totals = self.ctx.reduce(torch.stack(sums).cpu())
        return (totals[:, 0] / totals[:, 1].clamp(min=1.0)).tolist()

    def _count_step(self) -> None:
        while len(self.usage) <= self.task:
            self.usage.append([])
        row = self.usage[self.task]
        k = self.detector.current if self.detect else self.task
        row.extend([0] * (k + 1 - len(row)))
        row[k] += 1
        self.steps += 1

    # -- context switches ------------------------------------------------------------------
    def _commit(self) -> None:
        """Commit availability as the update masks and start a fresh optimizer."""
        self.committed = {k: v.clone() for k, v in self.available.items()}
        for layer in self.layers:
            for name in self._tensors(layer):
                a = self.committed[layer.name if self.config.mode == "n" else name]
                self.ctx.update_mask(name, None if bool((a == 1).all()) else a.float())
        self.ctx.reset_optimizer()

    def on_task_start(self, task: TaskInfo) -> None:
        self.task = task.index  # logging only: context=detect never reads the boundaries
        self.boundaries = self.boundaries[:task.index] + [self.steps]

    def on_task_end(self, task: TaskInfo, data: Rows) -> None:
        if not self.detect:
            self._commit()

    # -- reporting ---------------------------------------------------------------------------
    def available_fraction(self) -> dict[str, float]:
        """Per hidden layer, the fraction of units (p-mode: weights and biases) with A >= 0.05."""
        out = {}
        for layer in self.layers:
            if self.config.mode == "n":
                values = self.available[layer.name]
            else:
                values = torch.cat([self.available[n].flatten() for n in self._tensors(layer)])
            out[layer.name] = float((values >= UNAVAILABLE_BELOW).double().mean())
        return out

    def task_metrics(self, task: TaskInfo) -> dict[str, float]:
        fractions = self.available_fraction()
        out = {f"gateon/available/{name}": v for name, v in fractions.items()}
        out["gateon/available"] = sum(fractions.values()) / len(fractions)
        if self.detect:
            out["gateon/contexts"] = float(self.detector.known)
            scores = detection_scores(self.switches, self.boundaries[1:])
            out.update({f"gateon/detect/{k}": v for k, v in scores.items() if not math.isnan(v)})
        return out

    def matrices(self) -> dict[str, Matrix]:
        width = max((len(row) for row in self.usage), default=0)
        steps = [[float(c) for c in row] + [0.0] * (width - len(row)) for row in self.usage]
        out = {"gateon_context_per_task": Matrix(steps, "task", "context", "training steps per task and context")}
        if self.eval_chosen:
            chosen = [[1.0 if k == c else 0.0 for k in range(max(self.eval_chosen) + 1)] for c in self.eval_chosen]
            out["gateon_eval_context_per_task"] = Matrix(chosen, "task", "context",
                                                         "context chosen for each task's test set")
        return out

    # -- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"available": self.available, "committed": self.committed, "steps": self.steps,
                "task": self.task, "boundaries": list(self.boundaries), "switches": list(self.switches),
                "usage": [list(r) for r in self.usage], "eval_chosen": list(self.eval_chosen),
                "detector": self.detector.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.available = {k: v.clone() for k, v in state["available"].items()}
        self.committed = {k: v.clone() for k, v in state["committed"].items()}
        self.steps, self.task = int(state["steps"]), int(state["task"])
        self.boundaries, self.switches = list(state["boundaries"]), list(state["switches"])
        self.usage = [list(r) for r in state["usage"]]
        self.eval_chosen = list(state["eval_chosen"])
        self.detector.load_state_dict(state["detector"])
