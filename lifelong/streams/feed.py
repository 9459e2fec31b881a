"""The stream as a sequence of events, with task boundaries travelling inside it.

A run's training stream is a flat, rank-free *plan*: for each task a ``TaskStart``, its
batches (every epoch, each one seeded global batch), then a ``TaskEnd``. A worker asks
for a stretch of plan positions and gets its own slice of each global batch. The plan is
a pure function of (stream, seed, batch size, epochs, the strategy's ``train_on``), so any
position can be served at any time: in-process (``LocalFeed``, the plain reference and fast
tests) or by the stream actor to N workers (``platform/stream_actor.py``), and a resumed
run simply starts at a task's position.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence, Union

import torch

from lifelong.streams.batches import Rows, Samples, epoch_order, epoch_seed, eval_slices, n_batches, train_slice
from lifelong.streams.scenarios import StreamSpec, TaskInfo, TaskStream

TrainOn = Callable[[int], Sequence[int]]


@dataclass(frozen=True)
class TaskStart:
    task: TaskInfo
    steps: int  # optimizer steps this task takes, all epochs


@dataclass(frozen=True)
class TrainRows:
    task: int
    epoch: int
    rows: Samples  # this worker's slice of one global batch, raw (uint8)


@dataclass(frozen=True)
class TaskEnd:
    task: TaskInfo


Event = Union[TaskStart, TrainRows, TaskEnd]


class StreamServer:
    """Serves plan positions from an in-memory ``TaskStream``; rank-agnostic and stateless
    towards its callers (it only caches the current training set and epoch order)."""

    def __init__(self, stream: TaskStream, batch_size: int, epochs: int, seed: int,
                 train_on: TrainOn = lambda t: [t]) -> None:
        self.stream, self.spec = stream, stream.spec()
        self.batch_size, self.seed, self.train_on = batch_size, seed, train_on
        self.plan: list[tuple[int, ...]] = []  # (kind, task[, epoch, batch]); kind 0 start, 1 batch, 2 end
        self.task_starts: list[int] = []
        self.steps: list[int] = []
        for t, info in enumerate(self.spec.tasks):
            size = sum(self.spec.tasks[s].n_train for s in train_on(t))
            per_epoch = n_batches(size, batch_size)
            self.task_starts.append(len(self.plan))
            self.steps.append(per_epoch * epochs)
            self.plan.append((0, t))
            self.plan += [(1, t, e, b) for e in range(epochs) for b in range(per_epoch)]
            self.plan.append((2, t))
        self._sets: OrderedDict[int, Samples] = OrderedDict()  # task -> its training set
        self._orders: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.plan)

    def position_of(self, task: int) -> int:
        """Where ``task`` starts in the plan (the end, past the last task)."""
        return self.task_starts[task] if task < len(self.task_starts) else len(self.plan)

    def chunk(self, start: int, count: int, rank: int, world_size: int) -> list[Event]:
        """Plan positions [start, start + count) as this rank sees them."""
        return [self._event(item, rank, world_size) for item in self.plan[start:start + count]]

    def test_slices(self, task: int, batch_size: int, rank: int, world_size: int) -> list[Samples]:
        """This rank's batches of ``task``'s test set (the same count on every rank)."""
        return list(eval_slices(Samples.of(self.stream.tasks[task], "test"), batch_size, rank, world_size))

    def rows(self, task: int, idx: torch.Tensor) -> Samples:
        """Rows of ``task``'s own training data (what ``on_task_end`` estimates from)."""
        return Samples.of(self.stream.tasks[task], "train")[idx]

    # -- internals ------------------------------------------------------------------------
    def _event(self, item: tuple[int, ...], rank: int, world_size: int) -> Event:
        kind, t = item[0], item[1]
        if kind == 0:
            return TaskStart(self.spec.tasks[t], self.steps[t])
        if kind == 2:
            return TaskEnd(self.spec.tasks[t])
        epoch, b = item[2], item[3]
        data = self.training_set(t)
        order = self._order(t, epoch, len(data))
        return TrainRows(t, epoch, data[train_slice(order, b, self.batch_size, rank, world_size)])

    def training_set(self, t: int) -> Samples:
        """Task ``t``'s training rows: the union of the tasks ``train_on(t)`` names."""
        if t not in self._sets:
            parts = [Samples.of(self.stream.tasks[s], "train") for s in self.train_on(t)]
            self._sets[t] = parts[0] if len(parts) == 1 else Samples.cat(parts)  # no copy of one
            _trim(self._sets, keep=2)  # ranks may straddle a boundary
        return self._sets[t]

    def _order(self, t: int, epoch: int, n: int) -> torch.Tensor:
        key = (t, epoch)
        if key not in self._orders:
            self._orders[key] = epoch_order(n, epoch_seed(self.seed, t, epoch))
            _trim(self._orders, keep=2)
        return self._orders[key]


class Feed(Protocol):
    """One worker's view of the stream: what the learner consumes."""

    spec: StreamSpec
    wait_seconds: float  # time spent blocked waiting for events

    def events(self, start_task: int = 0) -> Iterator[Event]: ...

    def test_slices(self, task: int) -> Iterator[Samples]: ...

    def train_rows(self, task: int) -> Rows: ...


class LocalFeed:
    """A ``StreamServer`` in this process, seen as one rank: no waiting, no transport."""

    def __init__(self, server: StreamServer, rank: int, world_size: int, eval_batch_size: int) -> None:
        self.server, self.spec = server, server.spec
        self.rank, self.world_size, self.eval_batch_size = rank, world_size, eval_batch_size
        self.wait_seconds = 0.0

    def events(self, start_task: int = 0) -> Iterator[Event]:
        for position in range(self.server.position_of(start_task), len(self.server)):
            started = time.perf_counter()
            event = self.server.chunk(position, 1, self.rank, self.world_size)[0]
            self.wait_seconds += time.perf_counter() - started
            yield event

    def test_slices(self, task: int) -> Iterator[Samples]:
        return iter(self.server.test_slices(task, self.eval_batch_size, self.rank, self.world_size))

    def train_rows(self, task: int) -> Rows:
        return Samples.of(self.server.stream.tasks[task], "train")


def _trim(cache: OrderedDict, keep: int) -> None:
    while len(cache) > keep:
        cache.popitem(last=False)
