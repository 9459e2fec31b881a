"""Task sequences (Permuted, Split x task/domain/class) and sharded batches."""

from __future__ import annotations

import pytest
import torch

from lifelong.streams import scenarios
from lifelong.streams.batches import (Batch, Featurizer, Samples, eval_batches, n_batches,
                                      train_batches)
from lifelong.streams.datasets import load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def is_permutation(p: torch.Tensor, n: int) -> bool:
    return p.shape == (n,) and torch.equal(p.sort().values, torch.arange(n))


# -- Permuted ---------------------------------------------------------------------------------------------

def test_permuted_task_0_is_identity_and_others_are_permutations(digits):
    stream = scenarios.permuted(digits, n_tasks=4, setting="domain", seed=0)
    assert len(stream) == 4
    assert stream.tasks[0].permutation is None
    perms = [t.permutation for t in stream.tasks[1:]]
    for p in perms:
        assert is_permutation(p, 64)
        assert not torch.equal(p, torch.arange(64))
    # each task has its own permutation
    assert not torch.equal(perms[0], perms[1]) and not torch.equal(perms[1], perms[2])
    # the raw rows are untouched: the permutation is applied when featurising
    for t in stream.tasks:
        assert torch.equal(t.train.x, digits.train.x)
        assert torch.equal(t.test.x, digits.test.x)
    assert stream.input_dim == 64


def test_permuted_same_seed_same_permutations_different_seed_different(digits):
    a = scenarios.permuted(digits, 3, "domain", seed=5)
    b = scenarios.permuted(digits, 3, "domain", seed=5)
    c = scenarios.permuted(digits, 3, "domain", seed=6)
    for t in (1, 2):
        assert torch.equal(a.tasks[t].permutation, b.tasks[t].permutation)
        assert not torch.equal(a.tasks[t].permutation, c.tasks[t].permutation)


def test_permuted_domain_setting(digits):
    stream = scenarios.permuted(digits, 3, "domain", seed=0)
    assert stream.n_outputs == 10
    for t in stream.tasks:
        assert torch.equal(t.train.y, digits.train.y)  # no label offset
        assert torch.equal(t.test.y, digits.test.y)
        assert t.output_mask is None
    assert stream.output_masks() is None


def test_permuted_task_setting_has_per_task_heads_and_masks(digits):
    stream = scenarios.permuted(digits, 3, "task", seed=0)
    assert stream.n_outputs == 30
    masks = stream.output_masks()
    assert masks.shape == (3, 30) and masks.dtype == torch.bool
    for t, task in enumerate(stream.tasks):
        assert torch.equal(task.train.y, digits.train.y + 10 * t)
        assert torch.equal(task.test.y, digits.test.y + 10 * t)
        expected = torch.zeros(30, dtype=torch.bool)
        expected[10 * t: 10 * t + 10] = True
        assert torch.equal(task.output_mask, expected)
        assert torch.equal(masks[t], expected)
        # every label falls inside its own task's mask
        assert bool(masks[t][task.train.y].all())


def test_permuted_class_setting_offsets_labels_without_masks(digits):
    stream = scenarios.permuted(digits, 3, "class", seed=0)
    assert stream.n_outputs == 30
    for t, task in enumerate(stream.tasks):
        assert torch.equal(task.train.y, digits.train.y + 10 * t)
        assert task.output_mask is None
    assert stream.output_masks() is None


# -- Split ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting", ["task", "domain", "class"])
def test_split_tasks_hold_their_classes(digits, setting):
    stream = scenarios.split(digits, n_tasks=3, classes_per_task=3, setting=setting, seed=0)
    assert len(stream) == 3
    for t, task in enumerate(stream.tasks):
        assert task.permutation is None
        classes = list(range(3 * t, 3 * t + 3))
        for part, full in ((task.train, digits.train), (task.test, digits.test)):
            # exactly the rows of the data set whose class belongs to this task
            keep = torch.isin(full.y, torch.tensor(classes))
            assert torch.equal(part.x, full.x[keep])
            original = part.y + 3 * t if setting == "domain" else part.y
            assert torch.equal(original, full.y[keep])
            assert sorted(original.unique().tolist()) == classes
    assert stream.tasks[1].name == "classes 3,4,5"


def test_split_domain_relabels_to_0_k(digits):
    stream = scenarios.split(digits, 5, 2, "domain", seed=0)
    assert stream.n_outputs == 2
    for task in stream.tasks:
        assert sorted(task.train.y.unique().tolist()) == [0, 1]
        assert sorted(task.test.y.unique().tolist()) == [0, 1]
        assert task.output_mask is None
    assert stream.output_masks() is None


def test_split_task_setting_masks(digits):
    stream = scenarios.split(digits, 5, 2, "task", seed=0)
    assert stream.n_outputs == 10
    masks = stream.output_masks()
    assert masks.shape == (5, 10)
    for t in range(5):
        assert masks[t].nonzero().flatten().tolist() == [2 * t, 2 * t + 1]
    # the masks partition the outputs
    assert torch.equal(masks.sum(0), torch.ones(10, dtype=torch.long))


def test_split_class_setting_keeps_labels_and_has_no_masks(digits):
    stream = scenarios.split(digits, 5, 2, "class", seed=0)
    assert stream.n_outputs == 10
    assert stream.output_masks() is None
    assert sorted(stream.tasks[4].train.y.unique().tolist()) == [8, 9]


# -- subsampling ------------------------------------------------------------------------------------------

def test_permuted_subsampling_counts(digits):
    stream = scenarios.permuted(digits, 3, "domain", seed=0, train_samples=100, test_samples=40)
    for task in stream.tasks:
        assert len(task.train.y) == 100 and task.train.x.shape == (100, 64)
        assert len(task.test.y) == 40
    # a limit above the data size keeps everything
    full = scenarios.permuted(digits, 2, "domain", seed=0, train_samples=10**6)
    assert len(full.tasks[1].train.y) == 1347


def test_split_subsampling_counts_and_rows_are_real(digits):
    stream = scenarios.split(digits, 2, 2, "class", seed=0, train_samples=30, test_samples=7)
    for t, task in enumerate(stream.tasks):
        assert len(task.train.y) == 30 and len(task.test.y) == 7
        assert set(task.train.y.tolist()) <= {2 * t, 2 * t + 1}
        # each kept row is a real row of the training set with its real label
        rows = {(tuple(x.tolist()), int(y)) for x, y in zip(digits.train.x, digits.train.y)}
        assert all((tuple(x.tolist()), int(y)) in rows for x, y in zip(task.train.x, task.train.y))
    a = scenarios.split(digits, 2, 2, "class", seed=0, train_samples=30)
    b = scenarios.split(digits, 2, 2, "class", seed=0, train_samples=30)
    assert torch.equal(a.tasks[1].train.x, b.tasks[1].train.x)


# -- Featurizer --------------------------------------------------------------------------------------------

def test_featurizer_applies_each_rows_own_task_permutation(digits):
    stream = scenarios.permuted(digits, 3, "domain", seed=1)
    featurize = Featurizer(stream)
    x = digits.train.x[:9]
    task = torch.tensor([0, 1, 2, 2, 1, 0, 1, 2, 0])
    samples = Samples(x, digits.train.y[:9], task)
    batch = featurize(samples)
    assert batch.x.dtype == torch.float32 and batch.x.shape == (9, 64)
    assert torch.equal(batch.task, task) and torch.equal(batch.y, samples.y)
    for row in range(9):
        perm = stream.tasks[int(task[row])].permutation
        pixels = x[row] if perm is None else x[row][perm]
        expected = (pixels.float() / stream.max_value - stream.mean) / stream.std
        torch.testing.assert_close(batch.x[row], expected)
    # the input rows are not modified in place
    assert torch.equal(samples.x, digits.train.x[:9])


def test_featurizer_normalises_to_zero_mean_unit_std(digits):
    stream = scenarios.split(digits, 5, 2, "class", seed=0)
    featurize = Featurizer(stream)
    batch = featurize(Samples(digits.train.x, digits.train.y, torch.zeros_like(digits.train.y)))
    assert float(batch.x.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(batch.x.std()) == pytest.approx(1.0, abs=1e-4)


# -- sharded batches -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed(digits):
    stream = scenarios.permuted(digits, 2, "domain", seed=0, train_samples=100)
    data = Samples.cat([Samples.of(t, "train") for t in stream.tasks])
    return data, Featurizer(stream)


@pytest.mark.parametrize("batch_size", [16, 15])
def test_train_batches_shards_union_to_the_global_batch(mixed, batch_size):
    data, featurize = mixed
    single = list(train_batches(data, featurize, batch_size, seed=7))
    rank0 = list(train_batches(data, featurize, batch_size, seed=7, rank=0, world_size=2))
    rank1 = list(train_batches(data, featurize, batch_size, seed=7, rank=1, world_size=2))
    assert len(single) == len(rank0) == len(rank1) == n_batches(200, batch_size) == 200 // batch_size
    for whole, a, b in zip(single, rank0, rank1):
        assert len(whole) == batch_size
        assert len(a) + len(b) == batch_size and abs(len(a) - len(b)) <= 1
        union = Batch.cat([a, b])
        assert torch.equal(union.x, whole.x)
        assert torch.equal(union.y, whole.y)
        assert torch.equal(union.task, whole.task)


def test_train_batches_are_seeded_shuffles_dropping_the_last_partial_batch(mixed):
    data, featurize = mixed
    a = list(train_batches(data, featurize, 30, seed=1))
    b = list(train_batches(data, featurize, 30, seed=1))
    c = list(train_batches(data, featurize, 30, seed=2))
    assert len(a) == 6  # 200 rows // 30; the last 20 are dropped
    assert all(torch.equal(p.x, q.x) for p, q in zip(a, b))
    assert not torch.equal(Batch.cat(a).y, Batch.cat(c).y)
    # a shuffle, not a sorted walk through the data
    assert not torch.equal(Batch.cat(a).y, data.y[:180])
    # no row is drawn twice within an epoch (rows are unique by (task, content) here)
    keys = {(int(t), tuple(x.tolist())) for t, x in zip(Batch.cat(a).task, Batch.cat(a).x)}
    assert len(keys) == 180


@pytest.mark.parametrize("n, world_size, batch_size", [(101, 2, 10), (10, 3, 4), (2, 3, 5), (0, 2, 4)])
def test_eval_batches_same_count_on_every_rank_and_cover_the_data_once(digits, n, world_size,
                                                                         batch_size):
    stream = scenarios.permuted(digits, 2, "domain", seed=0)
    data = Samples.of(stream.tasks[1], "test")[torch.arange(n)]
    featurize = Featurizer(stream)
    per_rank = [list(eval_batches(data, featurize, batch_size, r, world_size))
                for r in range(world_size)]
    counts = {len(batches) for batches in per_rank}
    assert len(counts) == 1, counts
    assert counts.pop() >= 1
    everything = Batch.cat([b for batches in per_rank for b in batches])
    whole = featurize(data)
    assert torch.equal(everything.x, whole.x)
    assert torch.equal(everything.y, whole.y)
    assert all(len(b) <= batch_size for batches in per_rank for b in batches)
