"""The stream actor: one Ray actor owns a run's task sequence and streams it to N learners.

The data set is loaded once, in the actor, instead of once per worker. Each worker pulls
its own slices in chunks of ``stream.chunk_batches`` plan positions and keeps at most
``stream.prefetch`` chunks in flight: the actor produces a chunk only when a worker asks
for it (backpressure), so memory stays flat however long the stream. A chunk travels as
three contiguous numpy arrays (``feed.Chunk``), which Ray's object store hands to the
worker without a copy or a per-batch unpickle. Task boundaries are events inside the
stream (``streams/feed.py``). Workers time how long they sit blocked
on the stream; the learner logs it as ``stream/wait_fraction``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Iterator

import ray
import torch

from lifelong.platform.config import RunConfig
from lifelong.streams.batches import Samples
from lifelong.streams.feed import Chunk, Event, StreamServer
from lifelong.streams.registry import build_stream
from lifelong.streams.scenarios import StreamSpec


@ray.remote(num_cpus=0)  # it mostly waits; it must not take a core from a learner
class StreamActor:
    def __init__(self, cfg: RunConfig) -> None:
        from lifelong.strategies.registry import resolve_strategy

        strategy = resolve_strategy(cfg.strategy.name)
        self.server = StreamServer(build_stream(cfg.stream, cfg.seed), cfg.train.batch_size,
                                   cfg.train.epochs, cfg.seed, strategy.train_on)
        self.chunks_served = 0

    def describe(self) -> tuple[StreamSpec, list[int], int]:
        """The spec, where each task starts in the plan, and the plan's length."""
        return self.server.spec, self.server.task_starts, len(self.server)

    def chunk(self, start: int, count: int, rank: int, world_size: int) -> Chunk:
        self.chunks_served += 1
        return self.server.packed(start, count, rank, world_size)

    def test_shards(self, tasks: list[int], rank: int, world_size: int) -> list[Samples]:
        return [self.server.test_shard(t, rank, world_size) for t in tasks]

    def rows(self, task: int, idx: torch.Tensor) -> Samples:
        return self.server.rows(task, idx)

    def served(self) -> int:
        return self.chunks_served


class RemoteFeed:
    """One worker's view of the stream actor, with bounded prefetch (see ``Feed``)."""

    def __init__(self, actor: Any, rank: int, world_size: int, chunk_batches: int,
                 prefetch: int) -> None:
        self.actor = actor
        self.rank, self.world_size = rank, world_size
        self.chunk_batches, self.prefetch = chunk_batches, prefetch
        self.spec, self.task_starts, self.length = ray.get(actor.describe.remote())
        self.wait_seconds = 0.0

    def events(self, start_task: int = 0) -> Iterator[Event]:
        start = self.task_starts[start_task] if start_task < len(self.task_starts) else self.length
        positions = iter(range(start, self.length, self.chunk_batches))
        in_flight: deque = deque()

        def ask() -> None:
            position = next(positions, None)
            if position is not None:
                in_flight.append(self.actor.chunk.remote(position, self.chunk_batches, self.rank,
                                                         self.world_size))

        for _ in range(self.prefetch):
            ask()
        while in_flight:
            started = time.perf_counter()
            events = ray.get(in_flight.popleft()).events()
            self.wait_seconds += time.perf_counter() - started
            ask()  # keep `prefetch` chunks coming while this one is consumed
            yield from events

    def test_shards(self, tasks: list[int]) -> list[Samples]:
        """This worker's shards of these test sets, in one round trip (the learner keeps
        them, featurised: ``platform/evaluation.py``)."""
        return ray.get(self.actor.test_shards.remote(list(tasks), self.rank, self.world_size))

    def train_rows(self, task: int) -> "RemoteRows":
        return RemoteRows(self.actor, task, self.spec.tasks[task].n_train)


class RemoteRows:
    """A task's training rows, fetched from the stream actor only when indexed."""

    def __init__(self, actor: Any, task: int, n: int) -> None:
        self.actor, self.task, self.n = actor, task, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: torch.Tensor) -> Samples:
        return ray.get(self.actor.rows.remote(self.task, idx))
