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
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence, Union

import numpy as np
import torch

from lifelong.streams.batches import Rows, Samples, epoch_order, epoch_seed, n_batches, train_slice
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


@dataclass(frozen=True)
class Chunk:
    """A stretch of the plan as one rank sees it, packed for transport: the rows of all its
    batches in three contiguous numpy arrays (which Ray's object store hands to the worker
    zero-copy, instead of pickling a few tensors per batch) and a small index of events."""

    items: list[tuple[int, ...]]  # (0, task) start | (1, task, epoch, first_row) batch | (2, task) end
    x: np.ndarray  # uint8 [rows, D], every batch's rows back to back
    y: np.ndarray  # int64 [rows]
    task: np.ndarray  # int64 [rows]
    infos: dict[int, tuple[TaskInfo, int]]  # task -> (info, steps), for the starts and ends

    def events(self) -> list[Event]:
        """Unpack: each batch's rows are views of the chunk's arrays (no copy)."""
        with warnings.catch_warnings():  # Ray's zero-copy arrays are read-only; nothing writes rows
            warnings.simplefilter("ignore", UserWarning)
            x, y, task = (torch.from_numpy(a) for a in (self.x, self.y, self.task))
        out: list[Event] = []
        bounds = [item[3] for item in self.items if item[0] == 1] + [len(y)]
        b = 0
        for item in self.items:
            kind, t = item[0], item[1]
            info, steps = self.infos[t]
            if kind == 0:
                out.append(TaskStart(info, steps))
            elif kind == 2:
                out.append(TaskEnd(info))
            else:
                start, stop = bounds[b], bounds[b + 1]
                b += 1
                out.append(TrainRows(t, item[2], Samples(x[start:stop], y[start:stop], task[start:stop])))
        return out


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
        return self.packed(start, count, rank, world_size).events()

    def packed(self, start: int, count: int, rank: int, world_size: int) -> Chunk:
        """Plan positions [start, start + count) as this rank sees them, packed: the rows of
        consecutive batches of one task come from one gather of its training set."""
        items: list[tuple[int, ...]] = []
        infos: dict[int, tuple[TaskInfo, int]] = {}
        parts: list[Samples] = []
        runs: list[tuple[int, list[torch.Tensor]]] = []  # (task, row indices of each batch)
        rows = 0
        for item in self.plan[start:start + count]:
            kind, t = item[0], item[1]
            infos[t] = (self.spec.tasks[t], self.steps[t])
            if kind != 1:
                items.append(item)
                continue
            epoch, b = item[2], item[3]
            idx = train_slice(self._order(t, epoch, len(self.training_set(t))), b, self.batch_size,
                              rank, world_size)
            if not runs or runs[-1][0] != t:
                runs.append((t, []))
            runs[-1][1].append(idx)
            items.append((1, t, epoch, rows))
            rows += len(idx)
        for t, slices in runs:
            parts.append(self.training_set(t)[torch.cat(slices)])
        if parts:
            rows_of = Samples.cat(parts) if len(parts) > 1 else parts[0]
        else:
            rows_of = Samples(torch.zeros(0, self.spec.input_dim, dtype=torch.uint8),
                              torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
        return Chunk(items, rows_of.x.numpy(), rows_of.y.numpy(), rows_of.task.numpy(), infos)

    def test_shard(self, task: int, rank: int, world_size: int) -> Samples:
        """This rank's contiguous shard of ``task``'s test set (``eval_slices``' rows, whole)."""
        data = Samples.of(self.stream.tasks[task], "test")
        return data[torch.arange(len(data)).tensor_split(world_size)[rank]]

    def rows(self, task: int, idx: torch.Tensor) -> Samples:
        """Rows of ``task``'s own training data (what ``on_task_end`` estimates from)."""
        return Samples.of(self.stream.tasks[task], "train")[idx]

    # -- internals ------------------------------------------------------------------------
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

    def test_shards(self, tasks: list[int]) -> list[Samples]: ...  # this worker's shards, whole

    def train_rows(self, task: int) -> Rows: ...


class LocalFeed:
    """A ``StreamServer`` in this process, seen as one rank: no waiting, no transport."""

    def __init__(self, server: StreamServer, rank: int, world_size: int) -> None:
        self.server, self.spec = server, server.spec
        self.rank, self.world_size = rank, world_size
        self.wait_seconds = 0.0

    def events(self, start_task: int = 0) -> Iterator[Event]:
        for position in range(self.server.position_of(start_task), len(self.server)):
            started = time.perf_counter()
            event = self.server.chunk(position, 1, self.rank, self.world_size)[0]
            self.wait_seconds += time.perf_counter() - started
            yield event

    def test_shards(self, tasks: list[int]) -> list[Samples]:
        return [self.server.test_shard(t, self.rank, self.world_size) for t in tasks]

    def train_rows(self, task: int) -> Rows:
        return Samples.of(self.server.stream.tasks[task], "train")


def _trim(cache: OrderedDict, keep: int) -> None:
    while len(cache) > keep:
        cache.popitem(last=False)
