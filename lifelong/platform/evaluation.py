"""Evaluation at task boundaries: many test sets in a few forwards.

A long stream evaluates hundreds of small test sets at every boundary; one forward per
test set made boundaries quadratic in wall time. Here each task's test shard (this
worker's contiguous part of its test set) is fetched once, put through the task's own
pixel permutation once, and kept on the learner's device as uint8 rows, in task order:
one byte a value (a quarter of float32), and turning it into the model's floats is one
exact elementwise op per batch. An evaluation of tasks [0, k) then runs batches that mix
tasks, masks each row's logits by its own task, and counts correct predictions per task
from the task column (``bincount``). Counts are integers, all-reduced: the row is the same
on any number of workers, and every rank runs the same number of forwards (empty ones
when its shard is short), as ZeRO-3 gathers parameters collectively inside forward.

Shards are kept while they fit ``CACHE_BYTES`` (tasks in order); tasks beyond it are
fetched and permuted again at each evaluation, still in combined batches.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from lifelong.streams.batches import Featurizer
from lifelong.streams.feed import Feed

CACHE_BYTES = 512 * 2**20  # kept test rows per worker (uint8): 300 x 200 MNIST rows = 47 MB
FETCH_GROUP = 32  # test shards per request to the stream

Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (float rows, task ids) -> logits
ContextLogits = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # ... in context k


class EvalSets:
    """This worker's shards of every task's test set, featurised once, evaluated together."""

    def __init__(self, feed: Feed, featurize: Featurizer, batch_size: int, rank: int, world_size: int,
                 device: torch.device, cache_bytes: int = CACHE_BYTES) -> None:
        self.feed, self.featurize, self.batch_size, self.device = feed, featurize, batch_size, device
        sizes = [t.n_test for t in feed.spec.tasks]
        self.shard = [len(torch.arange(n).tensor_split(world_size)[rank]) for n in sizes]
        self.longest = [-(-n // world_size) for n in sizes]  # rank 0's shard: the longest
        row_bytes = feed.spec.input_dim
        self.offsets = [0]  # of each cached task's rows in the buffers
        for n in self.shard:
            if (self.offsets[-1] + n) * row_bytes > cache_bytes:
                break
            self.offsets.append(self.offsets[-1] + n)
        self.fits = len(self.offsets) - 1  # tasks [0, fits) are kept once fetched
        rows = self.offsets[-1]
        self.x = torch.empty(rows, feed.spec.input_dim, dtype=torch.uint8, device=device)
        self.y = torch.empty(rows, dtype=torch.int64, device=device)
        self.task = torch.empty(rows, dtype=torch.int64, device=device)
        self.cached = 0  # tasks [0, cached) are in the buffers

    @torch.no_grad()
    def accuracies(self, logits: Logits, upto: int,
                   reduce: Callable[[torch.Tensor], torch.Tensor]) -> list[float]:
        """Accuracy on tasks [0, upto), after ``reduce`` (the all-reduce) of the counts."""
        counts = reduce(self._tally(logits, upto)).cpu()
        return (counts[0] / counts[1].clamp(min=1)).tolist()

    @torch.no_grad()
    def inferred_accuracies(self, logits: ContextLogits, contexts: list[int], upto: int,
                            reduce: Callable[[torch.Tensor], torch.Tensor]) -> tuple[list[float], list[int]]:
        """Task-free evaluation: each task's test set runs in every one of ``contexts`` and
        keeps the one with the lowest mean loss over the whole set (all workers' shards). The
        accuracies of tasks [0, upto) in their chosen contexts, and those contexts."""
        if not contexts:
            raise ValueError("inferred_accuracies needs at least one context to try")
        counts = torch.stack([self._tally(lambda x, task, k=k: logits(x, task, k), upto, with_loss=True)
                              for k in contexts])
        counts = reduce(counts).cpu()
        seen = counts[:, 1].clamp(min=1)
        best = (counts[:, 2] / seen).argmin(0)  # per task: the first of the lowest-loss contexts
        accuracy = (counts[:, 0] / seen).gather(0, best[None]).squeeze(0)
        return accuracy.tolist(), [contexts[int(b)] for b in best]

    @torch.no_grad()
    def accuracies_inferring(self, logits: Logits, inferred: Callable[[], torch.Tensor], expected: list[int],
                             upto: int, reduce: Callable[[torch.Tensor], torch.Tensor]) -> tuple[list[float], list[float]]:
        """Task-free evaluation where the model infers each row's context: accuracy on tasks
        [0, upto), and the share of each task's rows whose inferred context (``inferred()``,
        read after each forward) is ``expected[task]``."""
        wanted = torch.tensor(expected[:upto], dtype=torch.int64, device=self.device)
        counts = reduce(self._tally(logits, upto, inferred=(inferred, wanted))).cpu()
        seen = counts[1].clamp(min=1)
        return (counts[0] / seen).tolist(), (counts[2] / seen).tolist()

    # -- internals -------------------------------------------------------------------------------
    def _tally(self, logits: Logits, upto: int, with_loss: bool = False,
               inferred: Optional[tuple[Callable[[], torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """This worker's per-task counts over tasks [0, upto), float64: correct, seen and (if
        ``with_loss``) summed cross-entropy or (if ``inferred``) rows whose inferred context is
        the expected one. Every rank runs the same number of forwards."""
        counts = torch.zeros(3 if with_loss or inferred else 2, upto, dtype=torch.float64, device=self.device)
        forwards = max(-(-sum(self.longest[:upto]) // self.batch_size), 1)  # equal on every rank
        batches = self._batches(upto)
        for _ in range(forwards):
            x, y, task = next(batches, None) or self._empty()
            out = logits(self.featurize.normalise(x), task)
            counts[0] += torch.bincount(task[out.argmax(1) == y], minlength=upto)
            counts[1] += torch.bincount(task, minlength=upto)
            if with_loss:
                loss = F.cross_entropy(out.float(), y, reduction="none").double()
                counts[2] += torch.bincount(task, weights=loss, minlength=upto)
            if inferred is not None and len(task):
                read, wanted = inferred
                counts[2] += torch.bincount(task[read().to(task.device) == wanted[task]], minlength=upto)
        return counts

    def _batches(self, upto: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches of ``batch_size`` rows (the last one shorter) over tasks [0, upto)."""
        carry: list[tuple[torch.Tensor, ...]] = []
        held = 0
        for block in self._blocks(upto):
            start = 0
            n = len(block[0])
            while start < n:
                take = min(self.batch_size - held, n - start)
                carry.append(tuple(part[start:start + take] for part in block))
                held, start = held + take, start + take
                if held == self.batch_size:
                    yield _join(carry)
                    carry, held = [], 0
        if carry:
            yield _join(carry)

    def _blocks(self, upto: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Tasks [0, upto)'s rows, permuted, uint8: the kept ones as one view, then the rest."""
        self._fill(min(upto, self.fits))
        kept = self.offsets[min(upto, self.fits)]
        if kept:
            yield self.x[:kept], self.y[:kept], self.task[:kept]
        for first in range(self.fits, upto, FETCH_GROUP):
            for rows in self.feed.test_shards(list(range(first, min(first + FETCH_GROUP, upto)))):
                rows = self.featurize.permute(rows)
                yield rows.x.to(self.device), rows.y.to(self.device), rows.task.to(self.device)

    def _fill(self, upto: int) -> None:
        for first in range(self.cached, upto, FETCH_GROUP):
            tasks = list(range(first, min(first + FETCH_GROUP, upto)))
            for t, rows in zip(tasks, self.feed.test_shards(tasks)):
                rows = self.featurize.permute(rows)
                span = slice(self.offsets[t], self.offsets[t + 1])
                self.x[span], self.y[span], self.task[span] = rows.x, rows.y, rows.task
        self.cached = max(self.cached, upto)

    def _empty(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.x.new_zeros(0, self.x.shape[1]), self.y.new_zeros(0), self.task.new_zeros(0))


def _join(parts: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]  # type: ignore[return-value]
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]
