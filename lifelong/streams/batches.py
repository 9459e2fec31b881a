"""Turning tasks into float batches, sharded across data-parallel workers.

``train.batch_size`` is the *global* batch: every rank draws the same seeded order,
and rank r takes its slice of each global batch. With a mean loss and equal slices,
N workers averaging gradients take exactly the step one worker takes on the whole
batch -- the property the sharding-equivalence tests rely on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Protocol, Sequence

import torch

from lifelong.streams.scenarios import Task


@dataclass
class Samples:
    """Raw labelled rows that remember their task: a task's data, a union, a buffer."""

    x: torch.Tensor  # uint8 [N, D]
    y: torch.Tensor  # int64 [N], output indices
    task: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, idx: torch.Tensor) -> "Samples":
        return Samples(self.x[idx], self.y[idx], self.task[idx])

    @staticmethod
    def of(task: Task, split: str = "train") -> "Samples":
        part = task.train if split == "train" else task.test
        return Samples(part.x, part.y, torch.full_like(part.y, task.index))

    @staticmethod
    def cat(parts: list["Samples"]) -> "Samples":
        return Samples(*(torch.cat([getattr(p, f) for p in parts]) for f in ("x", "y", "task")))


@dataclass
class Batch:
    x: torch.Tensor  # float32 [B, D], normalised
    y: torch.Tensor  # int64 [B]
    task: torch.Tensor  # int64 [B]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.x.to(device), self.y.to(device), self.task.to(device))

    @staticmethod
    def cat(parts: list["Batch"]) -> "Batch":
        return Batch(*(torch.cat([getattr(p, f) for p in parts]) for f in ("x", "y", "task")))


class Rows(Protocol):
    """Indexable labelled rows: ``Samples`` in memory, or a view whose rows a stream actor
    sends on demand. What boundary hooks (``on_task_end``) receive."""

    def __len__(self) -> int: ...

    def __getitem__(self, idx: torch.Tensor) -> Samples: ...


class Normalisation(Protocol):
    """What a featuriser needs of a stream (a ``TaskStream`` or its ``StreamSpec``)."""

    max_value: float
    mean: float
    std: float

    @property
    def permutations(self) -> Sequence[Optional[torch.Tensor]]: ...


class Featurizer:
    """uint8 rows -> normalised float rows, each with its own task's pixel permutation."""

    def __init__(self, stream: Normalisation) -> None:
        self.scale = 1.0 / (stream.max_value * stream.std)
        self.shift = stream.mean / stream.std
        self.permutations = list(stream.permutations)

    def __call__(self, samples: Samples) -> Batch:
        return Batch(self.normalise(self.permute(samples).x), samples.y, samples.task)

    def permute(self, samples: Samples) -> Samples:
        """The raw rows in their tasks' pixel orders, still uint8 (what evaluation caches)."""
        x, task = samples.x, samples.task
        if len(samples) and any(p is not None for p in self.permutations):
            first = int(task[0])
            if bool((task == first).all()):  # the common case: one task per batch
                perm = self.permutations[first]
                x = x if perm is None else x[:, perm.to(x.device)]
            else:
                x = x.clone()
                for t in task.unique().tolist():
                    perm = self.permutations[t]
                    if perm is not None:
                        rows = task == t
                        x[rows] = x[rows][:, perm.to(x.device)]
        return Samples(x, samples.y, task)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 rows (already permuted) -> the float rows the model sees."""
        return x.float().mul_(self.scale).sub_(self.shift)


def train_batches(data: Rows, featurize: Featurizer, batch_size: int, seed: int,
                  rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """One epoch of this rank's slices of seeded global batches (last partial one dropped)."""
    order = epoch_order(len(data), seed)
    for b in range(n_batches(len(data), batch_size)):
        yield featurize(data[train_slice(order, b, batch_size, rank, world_size)])


def epoch_order(n_samples: int, seed: int) -> torch.Tensor:
    """The seeded row order of one epoch: the same on every rank and in the stream actor."""
    return torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed))


def train_slice(order: torch.Tensor, b: int, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """Row indices of rank ``rank``'s slice of global batch ``b``."""
    return order[b * batch_size:(b + 1) * batch_size].tensor_split(world_size)[rank]


def eval_batches(data: Rows, featurize: Featurizer, batch_size: int,
                 rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """This rank's contiguous shard of a test set, featurised (see ``eval_slices``)."""
    for rows in eval_slices(data, batch_size, rank, world_size):
        yield featurize(rows)


def eval_slices(data: Rows, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[Samples]:
    """This rank's contiguous shard of a test set, raw. Every rank yields the same number of
    batches (possibly empty ones) so collective ops inside forward never hang. The shard is
    taken in one piece: rows that live in the stream actor come in one round trip, not one
    per batch (EWC's Fisher over a 60k-row task made 59)."""
    shard = torch.arange(len(data)).tensor_split(world_size)[rank]
    rows = data[shard]
    longest = -(-len(data) // world_size)
    for b in range(max(-(-longest // batch_size), 1)):
        part = slice(b * batch_size, (b + 1) * batch_size)  # views of the shard, no copy
        yield Samples(rows.x[part], rows.y[part], rows.task[part])


def n_batches(n_samples: int, batch_size: int) -> int:
    return max(n_samples // batch_size, 1)


def epoch_seed(seed: int, task: int, epoch: int) -> int:
    return (seed * 1_000_003 + task * 10_007 + epoch) % (2**63 - 1)
