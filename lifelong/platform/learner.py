"""One learner worker's life: build everything, then follow the stream task after task.

Runs inside a learner process (``worker.py``), fed by the stream actor, and, for fast
tests and the plain reference, in-process from a local feed. The stream says where each
task starts and ends; at each end the learner calls the strategy, evaluates the test sets
``eval`` asks for (``evaluation.py``: sharded across workers, counts all-reduced, so the row
is the same at any world size), and rank 0 hands the new accuracy-matrix row to the tracker.
A row that was not evaluated (``eval.every``) is all NaN; with ``eval.tasks=seen`` the
entries of tasks not trained yet are NaN.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from lifelong.platform.boundaries import BoundaryClock, due_after, figures_due, plots_due
from lifelong.platform.config import RunConfig
from lifelong.platform.context import PlatformContext
from lifelong.platform.engine import build_engine, optimizer_state_bytes
from lifelong.platform.errors import TrainingError
from lifelong.platform.evaluation import EvalSets
from lifelong.platform.model import Contextual, build_model, mask_logits
from lifelong.platform.probes import PlasticityProbe, probe_rows
from lifelong.platform.tracking import Tracker
from lifelong.strategies.base import Strategy
from lifelong.strategies.registry import resolve_strategy
from lifelong.streams.batches import Batch, Featurizer
from lifelong.streams.feed import Feed, LocalFeed, StreamServer, TaskEnd, TaskStart, TrainRows
from lifelong.streams.registry import build_stream
from lifelong.streams.scenarios import TaskStream

Progress = Callable[[dict], None]


@dataclass
class LearnerResult:
    R: list[list[float]] = field(default_factory=list)  # accuracy matrix rows so far
    init: list[float] = field(default_factory=list)  # accuracy at initialisation, per task
    online: list[float] = field(default_factory=list)  # per task: training-batch accuracy before each step
    probes: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, measures), rank 0
    task_starts: list[int] = field(default_factory=list)  # global step at which each task began
    train_seconds: float = 0.0  # optimizer steps, including waiting on the stream
    boundary_seconds: float = 0.0  # strategy task hooks + evaluation
    boundary_phases: dict[str, float] = field(default_factory=dict)  # of boundary_seconds, by phase
    probe_seconds: float = 0.0  # plasticity probes (within train_seconds and boundary_seconds)
    stream_wait_seconds: float = 0.0  # of train_seconds, blocked waiting for the stream
    first_step_at: Optional[float] = None  # wall-clock time of the first optimizer step
    steps: int = 0
    optimizer_state_bytes: int = 0  # held by this worker at the end


class Learner:
    def __init__(self, cfg: RunConfig, rank: int = 0, world_size: int = 1,
                 tracker: Optional[Tracker] = None, progress: Optional[Progress] = None,
                 stream: Optional[TaskStream] = None, feed: Optional[Feed] = None) -> None:
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.tracker = tracker if rank == 0 else None
        self.progress = progress if rank == 0 else None
        torch.manual_seed(cfg.seed)
        strategy_cls = resolve_strategy(cfg.strategy.name)
        if feed is None:
            server = StreamServer(stream or build_stream(cfg.stream, cfg.seed), cfg.train.batch_size,
                                  cfg.train.epochs, cfg.seed, strategy_cls.train_on)
            feed = LocalFeed(server, rank, world_size)
        self.feed = feed
        self.spec = feed.spec
        self.featurize = Featurizer(self.spec)
        self.masks = self.spec.masks
        self.ctx = PlatformContext(self.featurize, self.masks, rank, world_size, cfg.seed,
                                   len(self.spec.tasks), cfg.train.batch_size)
        self.strategy: Strategy = strategy_cls(cfg.strategy, self.ctx)
        model = build_model(cfg.model, self.spec.input_dim, self.spec.n_outputs)
        model = self.strategy.wrap_model(model)
        skeleton = architecture_of(model)
        micro_batch = max(cfg.train.batch_size // world_size, 1)
        self.engine = build_engine(model, cfg.optim, cfg.engine, micro_batch)
        self.device = self.engine.device
        if self.masks is not None:
            self.masks = self.ctx.masks = self.masks.to(self.device)
        self.ctx.attach(self.engine, skeleton)
        self.contextual = isinstance(model, Contextual)
        if self.contextual:
            self.ctx.context_of = self.strategy.context
        self.probe = (PlasticityProbe(skeleton, self.masks, cfg.probes.dormant_tau, self.ctx.context_of)
                      if cfg.probes.enabled else None)
        self.probe_batch: Optional[Batch] = None
        self.probed_at, self.probed = -1, {}  # the last probe's step and (rank 0's) measures
        self.tests = EvalSets(feed, self.featurize, cfg.train.eval_batch_size, rank, world_size,
                              self.device)
        self.result = LearnerResult()
        self.task_step = 0
        self.online_counts = torch.zeros(2, dtype=torch.float64, device=self.device)  # correct, seen
        self.at_boundary: Optional[Callable[["Learner"], None]] = None  # e.g. checkpoint
        self.started = time.perf_counter()

    # -- the stream --------------------------------------------------------------------------
    def run(self) -> LearnerResult:
        """Train from the first task not in ``result.R`` (all of them, unless resumed)."""
        self.started = time.perf_counter()
        if not self.result.init:
            self.result.init = self.evaluate_all()  # every task, whatever eval.tasks says
        self._emit(kind="start", n_tasks=len(self.spec.tasks), epochs=self.cfg.train.epochs,
                   done=len(self.result.R))
        started, boundaries, waited = time.perf_counter(), self.result.boundary_seconds, self.feed.wait_seconds
        for event in self.feed.events(start_task=len(self.result.R)):
            if isinstance(event, TrainRows):
                self.train_rows(event)
            elif isinstance(event, TaskStart):
                self.task_start(event)
            elif isinstance(event, TaskEnd):
                self.task_end(event)
        self.result.train_seconds += (time.perf_counter() - started
                                      - (self.result.boundary_seconds - boundaries))
        self.result.stream_wait_seconds += self.feed.wait_seconds - waited
        self.result.optimizer_state_bytes = optimizer_state_bytes(self.engine.optimizer)
        if self.tracker is not None:
            train = max(self.result.train_seconds, 1e-9)
            unprobed = max(self.result.train_seconds + self.result.boundary_seconds
                           - self.result.probe_seconds, 1e-9)
            self.tracker.metrics({"memory/optimizer_state_bytes_per_worker":
                                  self.result.optimizer_state_bytes,
                                  "time/train_seconds": self.result.train_seconds,
                                  "time/boundary_seconds": self.result.boundary_seconds,
                                  **{f"time/boundary_{k}_seconds": v
                                     for k, v in self.result.boundary_phases.items()},
                                  "time/probe_seconds": self.result.probe_seconds,
                                  "time/probe_overhead": self.result.probe_seconds / unprobed,
                                  "time/steps": self.result.steps,
                                  "stream/wait_seconds": self.result.stream_wait_seconds,
                                  "stream/wait_fraction": self.result.stream_wait_seconds / train},
                                 step=0, flush=True)
        return self.result

    def task_start(self, event: TaskStart) -> None:
        started = time.perf_counter()
        self.strategy.on_task_start(event.task)
        self.result.boundary_seconds += time.perf_counter() - started
        self._emit(kind="task", task=event.task.index, name=event.task.name, steps=event.steps)
        self.task_step = 0
        self.online_counts.zero_()
        self.result.task_starts = self.result.task_starts[:event.task.index] + [self.result.steps]
        if self.probe is not None and self.rank == 0:
            rows = probe_rows(self.feed.train_rows(event.task.index), self.cfg.probes.rows,
                              self.cfg.seed, event.task.index)
            self.probe_batch = self.featurize(rows).to(self.device)
        if self.result.first_step_at is None:
            self.result.first_step_at = time.time()

    def train_rows(self, event: TrainRows) -> None:
        terms = self.train_step(self.featurize(event.rows))
        self.result.steps += 1
        self.task_step += 1
        every = self.cfg.probes.every
        if self.probe is not None and every and self.result.steps % every == 0:
            self.run_probe()
        if self.result.steps % self.cfg.train.log_every == 0:
            check_finite(terms["loss"], event.task, self.task_step)
            if self.tracker is not None:
                log = {f"train/{k}": float(v) for k, v in terms.items()}
                self.tracker.metrics(log, step=self.result.steps)
                self._emit(kind="step", step_in_task=self.task_step, loss=log["train/loss"])

    def task_end(self, event: TaskEnd) -> None:
        started = time.perf_counter()
        task = event.task
        phases = BoundaryClock()
        at_end = {}
        if self.probe is not None:  # a periodic probe at this very step is this one too
            at_end = self.probed if self.probed_at == self.result.steps else self.run_probe()
        phases.lap("probe")
        self.strategy.on_task_end(task, self.feed.train_rows(task.index))
        phases.lap("strategy")
        n_tasks, every = len(self.spec.tasks), self.cfg.eval.every
        evaluated = due_after(task.index, n_tasks, every)
        self.result.R.append(self.evaluate_row(task.index) if evaluated else [math.nan] * n_tasks)
        reported = self.strategy.task_metrics(task)  # after the evaluation: it may report on it
        correct, seen = self.ctx.reduce(self.online_counts).cpu().tolist()
        self.result.online.append(correct / max(seen, 1.0))
        phases.lap("eval")
        if self.tracker is not None:
            self.tracker.metrics({"acc/online": self.result.online[-1],
                                  **{k.replace("plasticity/", "plasticity_at_task_end/", 1): v
                                     for k, v in at_end.items()}, **reported}, step=task.index)
            render = evaluated and plots_due(task.index // every, -(-n_tasks // every))
            figures = render and figures_due(task.index + 1 == n_tasks, self.tracker.render_seconds,
                                             time.perf_counter() - self.started)
            if evaluated:
                self.tracker.task_end(self.result.R, self.result.init, self.spec.name,
                                      self.result.online, render, figures)
            if figures:
                self.tracker.matrices(self.strategy.matrices())
            if self.probe is not None and figures:
                self.tracker.plasticity(self.result.probes, self.result.task_starts, self.spec.name)
        self._emit(kind="row", task=task.index, row=self.result.R[-1])
        phases.lap("tracking")
        if self.at_boundary is not None:
            self.at_boundary(self)
        phases.lap("checkpoint")
        for phase, seconds in phases.seconds.items():
            self.result.boundary_phases[phase] = self.result.boundary_phases.get(phase, 0.0) + seconds
        if self.tracker is not None:
            self.tracker.metrics({f"time/boundary/{k}_seconds": v for k, v in phases.seconds.items()},
                                 step=task.index)
        self.result.boundary_seconds += time.perf_counter() - started

    def train_step(self, batch) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
        self.engine.module.train()
        batch = batch.to(self.device)
        seen = self.strategy.augment_batch(batch)
        logits = mask_logits(self.forward(seen.x, seen.task), seen.task, self.masks)
        with torch.no_grad():  # online accuracy: this task's rows, predicted before the update
            self.online_counts[0] += (logits[:len(batch)].argmax(1) == batch.y).sum()  # no sync
            self.online_counts[1] += len(batch)
        task_loss = F.cross_entropy(logits, seen.y)
        extra = self.strategy.loss_terms(seen, logits)
        loss = task_loss + sum(extra.values()) if extra else task_loss
        self.engine.backward(loss)
        logged = self.strategy.transform_grads()
        self.engine.step()
        logged.update(self.strategy.after_step(batch) or {})  # None from older plugins
        terms = {"loss": loss.detach(), "task_loss": task_loss.detach(),
                 **{k: v.detach() for k, v in extra.items()}}
        terms.update({k: torch.tensor(v) for k, v in logged.items()})
        return terms

    def forward(self, x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """The engine's forward; a Contextual model also gets each row's context."""
        return self.engine(x, self.strategy.context(task) if self.contextual else None)

    # -- plasticity probes -------------------------------------------------------------------------
    def run_probe(self) -> dict[str, float]:
        """Probe the current model (collective: every rank gathers the full parameters at
        ZeRO-3; rank 0 measures and logs). Returns rank 0's measures ({} elsewhere)."""
        started = time.perf_counter()
        params = self.engine.full_params()
        values: dict[str, float] = {}
        if self.rank == 0 and self.probe is not None and self.probe_batch is not None:
            values = self.probe.measure(params, self.probe_batch)
            self.result.probes.append((self.result.steps, values))
            if self.tracker is not None:
                self.tracker.metrics(values, step=self.result.steps)
        self.probed_at, self.probed = self.result.steps, values
        self.result.probe_seconds += time.perf_counter() - started
        return values

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate_all(self) -> list[float]:
        """Accuracy on every task's test set; the same on any number of workers."""
        return self.evaluate(len(self.spec.tasks))

    def evaluate_row(self, task: int) -> list[float]:
        """The accuracy-matrix row after ``task``: every task (``eval.tasks=all``) or the tasks
        trained so far, NaN for the rest (``seen``)."""
        n_tasks = len(self.spec.tasks)
        upto = n_tasks if self.cfg.eval.tasks == "all" else task + 1
        return self.evaluate(upto) + [math.nan] * (n_tasks - upto)

    @torch.no_grad()
    def evaluate(self, upto: int) -> list[float]:
        """Accuracy on tasks [0, upto), in batches that mix tasks (``evaluation.py``). Collective:
        every rank runs the same number of forwards (ZeRO-3 gathers parameters inside them)."""
        self.engine.module.eval()
        tries = self.strategy.eval_contexts() if self.contextual else None
        expected = self.strategy.inferred_contexts() if self.contextual else None
        if expected is not None:
            model = self.engine.module
            accuracies, inferred = self.tests.accuracies_inferring(
                lambda x, task: mask_logits(self.engine(x, torch.full_like(task, Contextual.INFER)), task, self.masks),
                lambda: model.inferred, list(expected), upto, self.ctx.reduce)
            self.strategy.on_task_inference(inferred)
            return accuracies
        if tries is None:
            return self.tests.accuracies(lambda x, task: mask_logits(self.forward(x, task), task, self.masks),
                                         upto, self.ctx.reduce)
        accuracies, chosen = self.tests.inferred_accuracies(
            lambda x, task, k: mask_logits(self.engine(x, torch.full_like(task, k)), task, self.masks),
            list(tries), upto, self.ctx.reduce)
        self.strategy.on_eval_contexts(chosen)
        return accuracies

    def _emit(self, **event) -> None:  # type: ignore[no-untyped-def]
        if self.progress is not None:
            self.progress(event)


def architecture_of(model: torch.nn.Module) -> torch.nn.Module:
    """The model's architecture on the meta device, for functional forwards with explicit
    parameters. Without the strategies' forward hooks: those watch the live model only."""
    skeleton = copy.deepcopy(model).to("meta")
    for module in skeleton.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return skeleton


def check_finite(loss: torch.Tensor, task: int, step: int) -> None:
    """Stop a diverged run with a clear message instead of training on NaNs."""
    if not torch.isfinite(loss):
        raise TrainingError(f"training diverged (loss={float(loss)}) on task {task} at step {step}; "
                            f"lower optim.lr or the strategy's penalty strength")
