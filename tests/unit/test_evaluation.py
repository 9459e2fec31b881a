"""Evaluation in combined batches across tasks (``platform/evaluation.py``): the same counts as
one forward per task, on real digits, with each row's own permutation and logit mask; the
same on any number of ranks, with as many forwards on each; and the ``eval`` options."""

from __future__ import annotations

import math

import pytest
import torch

from lifelong.metrics import summarize
from lifelong.platform.errors import ConfigError
from lifelong.platform.evaluation import EvalSets
from lifelong.platform.boundaries import due_after
from lifelong.platform.learner import Learner
from lifelong.platform.model import mask_logits
from lifelong.streams.batches import Samples
from lifelong.streams.feed import LocalFeed
from lifelong.streams.registry import build_stream
from tests.conftest import make_config

# Permuted and task-incremental: every task has its own pixel order and its own output head.
STREAMS = {
    "permuted_task": {"dataset": "digits", "scenario": "permuted", "n_tasks": 4, "setting": "task",
                      "train_samples_per_task": 96, "test_samples_per_task": 101},
    "split_task": {"dataset": "digits", "scenario": "split", "n_tasks": 3, "classes_per_task": 3,
                   "setting": "task", "train_samples_per_task": 96},
}


def config(stream: dict, **groups) -> object:  # type: ignore[no-untyped-def]
    return make_config(stream=stream, model={"hidden": [32]}, strategy={"name": "naive"},
                       optim={"name": "sgd", "lr": 0.1}, train={"epochs": 1, "batch_size": 16,
                                                                 "eval_batch_size": 64},
                       engine={"backend": "torch"}, probes={"enabled": False}, seed=1, **groups)


@pytest.fixture(scope="module", params=sorted(STREAMS))
def trained(request) -> Learner:
    learner = Learner(config(STREAMS[request.param]))
    learner.run()
    return learner


def per_task_counts(learner: Learner) -> torch.Tensor:
    """The reference: each task's whole test set in a forward of its own."""
    counts = []
    model = learner.engine.module.eval()
    with torch.no_grad():
        for task in learner.feed.server.stream.tasks:
            batch = learner.featurize(Samples.of(task, "test"))
            logits = mask_logits(model(batch.x), batch.task, learner.masks)
            counts.append([int((logits.argmax(1) == batch.y).sum()), len(batch)])
    return torch.tensor(counts, dtype=torch.float64)


def combined_counts(learner: Learner, rank: int, world: int, cache_bytes: int, calls: list) -> torch.Tensor:
    feed = LocalFeed(learner.feed.server, rank, world)
    tests = EvalSets(feed, learner.featurize, 64, rank, world, learner.device, cache_bytes)
    model = learner.engine.module.eval()

    def logits(x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return mask_logits(model(x), task, learner.masks)

    got: list = []
    tests.accuracies(logits, len(learner.spec.tasks), lambda counts: got.append(counts) or counts)
    return got[0].T  # [tasks, (correct, seen)]


@pytest.mark.parametrize("world, cache_bytes", [(1, 2**30), (2, 2**30), (3, 50 * 64)])
def test_combined_batches_count_what_one_forward_per_task_counts(trained, world, cache_bytes):
    """Batches of 64 rows straddle tasks; a small cache (50 rows) keeps at most the first task and
    fetches the rest each time; 3 ranks get uneven shards (101 = 34 + 34 + 33 rows)."""
    reference = per_task_counts(trained)
    calls: list[list[int]] = []
    total = torch.zeros_like(reference)
    for rank in range(world):
        calls.append([])
        total += combined_counts(trained, rank, world, cache_bytes, calls[-1])
    assert torch.equal(total, reference)
    assert 0 < reference[:, 0].sum() < reference[:, 1].sum()  # neither trivial nor perfect
    assert len({len(c) for c in calls}) == 1  # every rank runs as many forwards (ZeRO-3)
    assert max(calls[0]) == 64 and sum(calls[0]) == sum(-(-int(n) // world) for n in reference[:, 1])
    if world == 1:  # the learner's own evaluation is this one
        assert trained.evaluate_all() == (reference[:, 0] / reference[:, 1]).tolist()


@pytest.mark.parametrize("world", [1, 2])
def test_per_row_inference_counts_rows_whose_inferred_context_is_their_tasks(trained, world):
    """``accuracies_inferring``: a stand-in model "infers" a context from each row alone
    (its first pixel's sign and the row's argmax parity); the shares of rows inferred as
    their task's expected context, summed over ranks, are what one pass over each test set
    counts, and the accuracies are the plain ones."""
    model = trained.engine.module.eval()
    seen: dict = {}

    def guess(x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] > 0).long() + 2 * (x.argmax(1) % 2)

    def logits(x: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        seen["inferred"] = guess(x)
        return mask_logits(model(x), task, trained.masks)

    n = len(trained.spec.tasks)
    expected = [t % 4 for t in range(n)]
    totals = torch.zeros(3, n, dtype=torch.float64)
    for rank in range(world):
        tests = EvalSets(LocalFeed(trained.feed.server, rank, world), trained.featurize, 64, rank, world,
                         trained.device)

        def keep(counts: torch.Tensor) -> torch.Tensor:
            totals.add_(counts)
            return counts

        tests.accuracies_inferring(logits, lambda: seen["inferred"], expected, n, keep)
    right = []
    for t, task in enumerate(trained.feed.server.stream.tasks):
        batch = trained.featurize(Samples.of(task, "test"))
        right.append(float((guess(batch.x) == expected[t]).sum()))
    assert totals[2].tolist() == right
    assert 0 < sum(right) < totals[1].sum()  # neither trivial nor perfect
    assert torch.equal(totals[:2].T, per_task_counts(trained))


def test_test_sets_are_fetched_once_and_kept_within_the_budget(trained):
    class Counting(LocalFeed):
        fetched: list = []

        def test_shards(self, tasks):  # type: ignore[no-untyped-def]
            self.fetched += tasks
            return super().test_shards(tasks)

    n = len(trained.spec.tasks)
    feed = Counting(trained.feed.server, 0, 1)
    kept = EvalSets(feed, trained.featurize, 64, 0, 1, trained.device)
    model = trained.engine.module.eval()
    for _ in range(3):
        kept.accuracies(lambda x, t: mask_logits(model(x), t, trained.masks), n, lambda c: c)
    assert feed.fetched == list(range(n)) and kept.x.dtype == torch.uint8
    feed.fetched = []
    row_bytes = trained.spec.input_dim
    first = trained.spec.tasks[0].n_test * row_bytes
    partial = EvalSets(feed, trained.featurize, 64, 0, 1, trained.device, cache_bytes=first)
    for _ in range(2):
        partial.accuracies(lambda x, t: mask_logits(model(x), t, trained.masks), n, lambda c: c)
    assert feed.fetched == [0] + list(range(1, n)) * 2  # task 0 kept, the rest fetched each time


def test_eval_options_leave_training_alone_and_mark_what_was_not_evaluated():
    stream = build_stream(config(STREAMS["permuted_task"]).stream, seed=1)
    full = Learner(config(STREAMS["permuted_task"]), stream=stream).run().R
    seen = Learner(config(STREAMS["permuted_task"], eval={"tasks": "seen"}), stream=stream).run().R
    every = Learner(config(STREAMS["permuted_task"], eval={"every": 3}), stream=stream).run().R
    n = len(full)
    for i in range(n):
        assert seen[i][:i + 1] == full[i][:i + 1] and all(math.isnan(a) for a in seen[i][i + 1:])
        if i in (2, 3):  # after every 3rd task, and the last
            assert every[i] == full[i]
        else:
            assert all(math.isnan(a) for a in every[i])
    assert "fwt" in summarize(full, [0.1] * n) and "fwt" not in summarize(seen, [0.1] * n)
    assert summarize(seen, [0.1] * n)["bwt"] == summarize(full, [0.1] * n)["bwt"]
    assert summarize(every, [0.1] * n)["acc"] == summarize(full, [0.1] * n)["acc"]


def test_due_after_every_kth_task_and_the_last():
    assert [t for t in range(10) if due_after(t, 10, 1)] == list(range(10))
    assert [t for t in range(10) if due_after(t, 10, 4)] == [3, 7, 9]
    assert [t for t in range(3) if due_after(t, 3, 5)] == [2]


@pytest.mark.parametrize("key, value, message", [
    ("eval.tasks", "future", "eval.tasks: 'future' is not one of all, seen"),
    ("eval.every", 0, "eval.every: must be >= 1, got 0"),
    ("engine.checkpoint_every", 0, "engine.checkpoint_every: must be >= 1, got 0"),
])
def test_bad_eval_and_checkpoint_options_are_one_line(key, value, message):
    group, name = key.split(".")
    with pytest.raises(ConfigError) as err:
        make_config(**{group: {name: value}})
    assert str(err.value) == message
