"""The stream plan: boundaries travel with the data, ranks get slices of one global batch,
and a resumed stream is exactly the suffix of the full one."""

from __future__ import annotations

import pytest
import torch

from lifelong.platform.config import StreamConfig
from lifelong.strategies.joint import Joint
from lifelong.streams.batches import Featurizer, Samples, epoch_seed, train_batches
from lifelong.streams.feed import LocalFeed, StreamServer, TaskEnd, TaskStart, TrainRows
from lifelong.streams.registry import build_stream

BATCH = 16


@pytest.fixture(scope="module")
def stream():
    cfg = StreamConfig(dataset="digits", scenario="split", n_tasks=3, setting="task",
                       train_samples_per_task=70, test_samples_per_task=20)
    return build_stream(cfg, seed=0)


def events(stream, rank=0, world=1, epochs=2, start_task=0, train_on=lambda t: [t]):
    server = StreamServer(stream, BATCH, epochs, seed=3, train_on=train_on)
    return list(LocalFeed(server, rank, world).events(start_task))


def test_each_task_is_a_start_its_batches_and_an_end(stream):
    got = events(stream)
    kinds = [type(e).__name__ for e in got]
    per_task = ["TaskStart"] + ["TrainRows"] * (2 * (70 // BATCH)) + ["TaskEnd"]
    assert kinds == per_task * 3
    starts = [e for e in got if isinstance(e, TaskStart)]
    assert [s.task.index for s in starts] == [0, 1, 2]
    assert all(s.steps == 2 * (70 // BATCH) and s.task.n_train == 70 for s in starts)
    assert [e.task.index for e in got if isinstance(e, TaskEnd)] == [0, 1, 2]
    assert all(bool((e.rows.task == e.task).all()) for e in got if isinstance(e, TrainRows))


def test_rows_are_the_seeded_global_batches_of_each_epoch(stream):
    """The same batches the learner drew for itself before the stream existed."""
    featurize = Featurizer(stream)
    got = [featurize(e.rows) for e in events(stream) if isinstance(e, TrainRows)]
    expected = [b for t, task in enumerate(stream.tasks) for epoch in range(2)
                for b in train_batches(Samples.of(task), featurize, BATCH, epoch_seed(3, t, epoch))]
    assert len(got) == len(expected)
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(got, expected))


def test_two_ranks_slices_make_up_the_single_rank_batch(stream):
    whole = [e.rows for e in events(stream) if isinstance(e, TrainRows)]
    halves = [[e.rows for e in events(stream, rank=r, world=2) if isinstance(e, TrainRows)]
              for r in range(2)]
    assert len(halves[0]) == len(halves[1]) == len(whole)
    for w, a, b in zip(whole, *halves):
        assert len(a) == len(b) == BATCH // 2
        assert torch.equal(torch.cat([a.x, b.x]), w.x) and torch.equal(torch.cat([a.y, b.y]), w.y)


@pytest.mark.parametrize("start_task", [1, 2, 3])
def test_a_resumed_stream_is_the_suffix_of_the_full_one(stream, start_task):
    full, resumed = events(stream), events(stream, start_task=start_task)
    first = [i for i, e in enumerate(full) if isinstance(e, TaskStart)] + [len(full)]
    suffix = full[first[start_task]:]
    assert len(resumed) == len(suffix)
    for a, b in zip(resumed, suffix):
        assert type(a) is type(b)
        if isinstance(a, TrainRows):
            assert torch.equal(a.rows.x, b.rows.x)


def test_joint_tasks_grow_by_the_strategy_train_on(stream):
    got = events(stream, epochs=1, train_on=Joint.train_on)
    steps = [e.steps for e in got if isinstance(e, TaskStart)]
    assert steps == [70 // BATCH, 140 // BATCH, 210 // BATCH]
    last = [e.rows for e in got if isinstance(e, TrainRows) and e.task == 2]
    assert set(torch.cat([r.task for r in last]).tolist()) == {0, 1, 2}


def test_test_shards_and_train_rows_come_from_the_task(stream):
    server = StreamServer(stream, BATCH, 1, seed=3)
    feed = LocalFeed(server, 1, 2)
    shard, = feed.test_shards([2])
    assert torch.equal(shard.y, stream.tasks[2].test.y[10:]) and bool((shard.task == 2).all())
    train = feed.train_rows(1)
    assert len(train) == 70 and torch.equal(train[torch.tensor([3, 5])].y, stream.tasks[1].train.y[[3, 5]])
