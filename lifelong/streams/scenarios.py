"""Task sequences cut from a data set: Permuted and Split, in three settings.

Settings (van de Ven & Tolias, "Three scenarios for continual learning"):
- ``task``: the task id is known at test time; logits outside the task's outputs are
  masked (per-task heads for Permuted: task t owns outputs [t*C, (t+1)*C)).
- ``domain``: one shared output space; Split relabels each task's classes 0..k-1.
- ``class``: all outputs seen by all tasks, no mask; the learner must tell tasks apart.

Everything is a pure function of (data set, config, seed): the same seed gives the
same tasks on every worker and every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from lifelong.streams.datasets import Dataset, ImageSet


@dataclass(frozen=True)
class Task:
    index: int
    name: str
    train: ImageSet  # labels already mapped to output indices
    test: ImageSet
    permutation: Optional[torch.Tensor]  # pixel order applied to every row; None = identity
    output_mask: Optional[torch.Tensor]  # bool [n_outputs]: outputs this task may use; None = all


@dataclass(frozen=True)
class TaskInfo:
    """A task as a learner sees it: what it is, not its rows (those stay with the stream)."""

    index: int
    name: str
    n_train: int
    n_test: int


@dataclass(frozen=True)
class StreamSpec:
    """Everything a learner needs to build its model and featurise rows, without the data:
    what the stream actor hands each worker before the first batch."""

    name: str
    tasks: list[TaskInfo]
    n_outputs: int
    input_dim: int
    max_value: float
    mean: float
    std: float
    permutations: list[Optional[torch.Tensor]]
    masks: Optional[torch.Tensor]  # bool [n_tasks, n_outputs], or None


@dataclass(frozen=True)
class TaskStream:
    """A finite sequence of tasks plus what a learner needs to featurise them."""

    name: str
    tasks: list[Task]
    n_outputs: int
    input_dim: int
    max_value: float
    mean: float
    std: float

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def permutations(self) -> list[Optional[torch.Tensor]]:
        return [t.permutation for t in self.tasks]

    def spec(self) -> StreamSpec:
        infos = [TaskInfo(t.index, t.name, len(t.train.y), len(t.test.y)) for t in self.tasks]
        return StreamSpec(self.name, infos, self.n_outputs, self.input_dim, self.max_value,
                          self.mean, self.std, self.permutations, self.output_masks())

    def output_masks(self) -> Optional[torch.Tensor]:
        """bool [n_tasks, n_outputs], or None when no task masks its logits."""
        if all(t.output_mask is None for t in self.tasks):
            return None
        full = torch.ones(self.n_outputs, dtype=torch.bool)
        return torch.stack([full if t.output_mask is None else t.output_mask for t in self.tasks])


def permuted(data: Dataset, n_tasks: int, setting: str, seed: int,
             train_samples: Optional[int] = None, test_samples: Optional[int] = None) -> TaskStream:
    """Task 0 sees the original images; task t>0 a fixed random pixel permutation."""
    g = torch.Generator().manual_seed(seed)
    c = data.n_classes
    n_outputs = c if setting == "domain" else n_tasks * c
    tasks = []
    for t in range(n_tasks):
        perm = None if t == 0 else torch.randperm(data.input_dim, generator=g)
        offset = 0 if setting == "domain" else t * c
        mask = None
        if setting == "task":
            mask = torch.zeros(n_outputs, dtype=torch.bool)
            mask[offset: offset + c] = True
        train = _subsample(data.train, train_samples, g)
        test = _subsample(data.test, test_samples, g)
        tasks.append(Task(t, f"permutation {t}", ImageSet(train.x, train.y + offset),
                          ImageSet(test.x, test.y + offset), perm, mask))
    return _stream(f"permuted_{data.name}", data, tasks, n_outputs)


def split(data: Dataset, n_tasks: int, classes_per_task: int, setting: str, seed: int,
          train_samples: Optional[int] = None, test_samples: Optional[int] = None) -> TaskStream:
    """Task t holds classes [t*k, (t+1)*k) of the data set, in label order."""
    g = torch.Generator().manual_seed(seed)
    k = classes_per_task
    n_outputs = k if setting == "domain" else data.n_classes
    tasks = []
    for t in range(n_tasks):
        classes = torch.arange(t * k, (t + 1) * k)
        mask = None
        if setting == "task":
            mask = torch.zeros(n_outputs, dtype=torch.bool)
            mask[classes] = True
        parts = []
        for part, limit in ((data.train, train_samples), (data.test, test_samples)):
            keep = torch.isin(part.y, classes)
            chosen = _subsample(ImageSet(part.x[keep], part.y[keep]), limit, g)
            y = chosen.y - t * k if setting == "domain" else chosen.y
            parts.append(ImageSet(chosen.x, y))
        names = ",".join(str(int(c)) for c in classes)
        tasks.append(Task(t, f"classes {names}", parts[0], parts[1], None, mask))
    return _stream(f"split_{data.name}", data, tasks, n_outputs)


def _subsample(part: ImageSet, limit: Optional[int], g: torch.Generator) -> ImageSet:
    if limit is None or limit >= len(part.y):
        return part
    keep = torch.randperm(len(part.y), generator=g)[:limit].sort().values
    return ImageSet(part.x[keep], part.y[keep])


def _stream(name: str, data: Dataset, tasks: list[Task], n_outputs: int) -> TaskStream:
    return TaskStream(name=name, tasks=tasks, n_outputs=n_outputs, input_dim=data.input_dim,
                      max_value=data.max_value, mean=data.mean, std=data.std)
