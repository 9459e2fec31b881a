"""One learner worker's life: build everything, then train task after task.

Runs inside a Ray Train worker (``worker.py``) and, for fast tests, in-process. At
each task boundary it calls the strategy, evaluates every task's test set (sharded
across workers, counts all-reduced, so the row is the same at any world size), and
rank 0 hands the new accuracy-matrix row to the tracker.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from lifelong.platform.config import RunConfig
from lifelong.platform.context import PlatformContext
from lifelong.platform.engine import build_engine, optimizer_state_bytes
from lifelong.platform.errors import TrainingError
from lifelong.platform.model import build_mlp, mask_logits
from lifelong.platform.tracking import Tracker
from lifelong.strategies.base import Strategy
from lifelong.strategies.registry import resolve_strategy
from lifelong.streams.batches import Featurizer, Samples, epoch_seed, eval_batches, n_batches, train_batches
from lifelong.streams.registry import build_stream
from lifelong.streams.scenarios import TaskStream

Progress = Callable[[dict], None]


@dataclass
class LearnerResult:
    R: list[list[float]] = field(default_factory=list)  # accuracy matrix rows so far
    init: list[float] = field(default_factory=list)  # accuracy at initialisation, per task
    train_seconds: float = 0.0  # optimizer steps only
    boundary_seconds: float = 0.0  # strategy task hooks + evaluation
    first_step_at: Optional[float] = None  # wall-clock time of the first optimizer step
    steps: int = 0
    optimizer_state_bytes: int = 0  # held by this worker at the end


class Learner:
    def __init__(self, cfg: RunConfig, rank: int = 0, world_size: int = 1,
                 tracker: Optional[Tracker] = None, progress: Optional[Progress] = None,
                 stream: Optional[TaskStream] = None) -> None:
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.tracker = tracker if rank == 0 else None
        self.progress = progress if rank == 0 else None
        torch.manual_seed(cfg.seed)
        self.stream = stream or build_stream(cfg.stream, cfg.seed)
        self.featurize = Featurizer(self.stream)
        self.masks = self.stream.output_masks()
        self.ctx = PlatformContext(self.featurize, self.masks, rank, world_size)
        strategy_cls = resolve_strategy(cfg.strategy.name)
        self.strategy: Strategy = strategy_cls(cfg.strategy, self.ctx)
        model = build_mlp(cfg.model, self.stream.input_dim, self.stream.n_outputs)
        model = self.strategy.wrap_model(model)
        skeleton = copy.deepcopy(model).to("meta")
        micro_batch = max(cfg.train.batch_size // world_size, 1)
        self.engine = build_engine(model, cfg.optim, cfg.engine, micro_batch)
        self.device = self.engine.device
        if self.masks is not None:
            self.masks = self.ctx.masks = self.masks.to(self.device)
        self.ctx.attach(self.engine, skeleton)
        self.result = LearnerResult()
        self.task_step = 0

    # -- the stream --------------------------------------------------------------------------
    def run(self) -> LearnerResult:
        tasks = self.stream.tasks
        self.result.init = self.evaluate_all()
        self._emit(kind="start", n_tasks=len(tasks), epochs=self.cfg.train.epochs)
        for task in tasks:
            started = time.perf_counter()
            self.strategy.on_task_start(task)
            data = self.strategy.train_data(task, Samples.of(task, "train"))
            self.result.boundary_seconds += time.perf_counter() - started
            self._emit(kind="task", task=task.index, name=task.name,
                       steps=n_batches(len(data), self.cfg.train.batch_size) * self.cfg.train.epochs)
            self.task_step = 0
            for epoch in range(self.cfg.train.epochs):
                self.train_epoch(task.index, data, epoch)
            started = time.perf_counter()
            self.strategy.on_task_end(task, Samples.of(task, "train"))
            self.result.R.append(self.evaluate_all())
            self.result.boundary_seconds += time.perf_counter() - started
            if self.tracker is not None:
                self.tracker.task_end(self.result.R, self.result.init, self.stream.name)
            self._emit(kind="row", task=task.index, row=self.result.R[-1])
        self.result.optimizer_state_bytes = optimizer_state_bytes(self.engine.optimizer)
        if self.tracker is not None:
            self.tracker.metrics({"memory/optimizer_state_bytes_per_worker":
                                  self.result.optimizer_state_bytes,
                                  "time/train_seconds": self.result.train_seconds,
                                  "time/boundary_seconds": self.result.boundary_seconds,
                                  "time/steps": self.result.steps}, step=0, flush=True)
        return self.result

    def train_epoch(self, task_index: int, data: Samples, epoch: int) -> None:
        cfg = self.cfg.train
        seed = epoch_seed(self.cfg.seed, task_index, epoch)
        batches = train_batches(data, self.featurize, cfg.batch_size, seed, self.rank, self.world_size)
        log: dict[str, float] = {}
        started = time.perf_counter()
        if self.result.first_step_at is None:
            self.result.first_step_at = time.time()
        for batch in batches:
            terms = self.train_step(batch)
            self.result.steps += 1
            self.task_step += 1
            if self.result.steps % cfg.log_every == 0:
                check_finite(terms["loss"], task_index, self.task_step)
                if self.tracker is not None:
                    log = {f"train/{k}": float(v) for k, v in terms.items()}
                    self.tracker.metrics(log, step=self.result.steps)
                    self._emit(kind="step", step_in_task=self.task_step, loss=log["train/loss"])
        self.result.train_seconds += time.perf_counter() - started

    def train_step(self, batch) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
        self.engine.module.train()
        batch = batch.to(self.device)
        seen = self.strategy.augment_batch(batch)
        logits = mask_logits(self.engine(seen.x), seen.task, self.masks)
        task_loss = F.cross_entropy(logits, seen.y)
        extra = self.strategy.loss_terms(seen, logits)
        loss = task_loss + sum(extra.values()) if extra else task_loss
        self.engine.backward(loss)
        logged = self.strategy.transform_grads()
        self.engine.step()
        self.strategy.after_step(batch)
        terms = {"loss": loss.detach(), "task_loss": task_loss.detach(),
                 **{k: v.detach() for k, v in extra.items()}}
        terms.update({k: torch.tensor(v) for k, v in logged.items()})
        return terms

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_all(self) -> list[float]:
        """Accuracy on every task's test set; the same on any number of workers."""
        self.engine.module.eval()
        counts = torch.zeros(len(self.stream.tasks), 2, dtype=torch.float64)
        for task in self.stream.tasks:
            data = Samples.of(task, "test")
            for batch in eval_batches(data, self.featurize, self.cfg.train.eval_batch_size,
                                      self.rank, self.world_size):
                # Empty shards still run forward: under ZeRO-3 it gathers parameters collectively.
                batch = batch.to(self.device)
                logits = mask_logits(self.engine(batch.x), batch.task, self.masks)
                counts[task.index, 0] += (logits.argmax(1) == batch.y).sum().item()
                counts[task.index, 1] += len(batch)
        counts = self.ctx.reduce(counts)
        return (counts[:, 0] / counts[:, 1].clamp(min=1)).tolist()

    def _emit(self, **event) -> None:  # type: ignore[no-untyped-def]
        if self.progress is not None:
            self.progress(event)


def check_finite(loss: torch.Tensor, task: int, step: int) -> None:
    """Stop a diverged run with a clear message instead of training on NaNs."""
    if not torch.isfinite(loss):
        raise TrainingError(f"training diverged (loss={float(loss)}) on task {task} at step {step}; "
                            f"lower optim.lr or the strategy's penalty strength")
