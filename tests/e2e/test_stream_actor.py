"""The stream actor through real Ray: workers see exactly what a local feed gives them, and
prefetch is bounded (the actor never runs ahead of a consumer by more than ``prefetch``)."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import ray
import torch

from lifelong.platform.stream_actor import RemoteFeed, StreamActor
from lifelong.streams.feed import Chunk, LocalFeed, StreamServer, TrainRows
from lifelong.streams.registry import build_stream
from tests.conftest import make_config

pytestmark = pytest.mark.slow
CFG = make_config(stream={"dataset": "digits", "scenario": "permuted", "n_tasks": 3,
                          "setting": "task", "train_samples_per_task": 200},
                  train={"epochs": 2, "batch_size": 20, "eval_batch_size": 32}, seed=4)


@pytest.fixture(scope="module")
def actor(ray_cluster):
    handle = StreamActor.remote(CFG)
    yield handle
    ray.kill(handle)


def local(rank: int, world: int) -> LocalFeed:
    server = StreamServer(build_stream(CFG.stream, CFG.seed), 20, 2, CFG.seed)
    return LocalFeed(server, rank, world)


def same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, TrainRows):
        return (a.task, a.epoch) == (b.task, b.epoch) and torch.equal(a.rows.x, b.rows.x) \
            and torch.equal(a.rows.y, b.rows.y)
    return a == b


@pytest.mark.parametrize("start_task", [0, 2])
def test_remote_events_equal_the_local_feed(actor, start_task):
    for rank in range(2):
        remote = RemoteFeed(actor, rank, 2, chunk_batches=7, prefetch=2)  # chunks straddle tasks
        got, want = list(remote.events(start_task)), list(local(rank, 2).events(start_task))
        assert len(got) == len(want) > 0
        assert all(same(a, b) for a, b in zip(got, want))
        assert remote.spec.name == local(rank, 2).spec.name and remote.wait_seconds > 0


def test_remote_test_shards_and_train_rows(actor):
    remote, ref = RemoteFeed(actor, 1, 2, 4, 2), local(1, 2)
    got, want = remote.test_shards([0, 1, 2]), ref.test_shards([0, 1, 2])
    assert len(got) == len(want) == 3
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.task, b.task)
               for a, b in zip(got, want))
    idx = torch.tensor([0, 7, 199])
    assert torch.equal(remote.train_rows(1)[idx].x, ref.train_rows(1)[idx].x)
    assert len(remote.train_rows(1)) == 200


def test_a_chunk_travels_as_contiguous_arrays_handed_over_without_a_copy(actor):
    """One object per chunk: its rows in contiguous numpy arrays that Ray maps from the object
    store (read-only views, no unpickling per batch); events are views of them."""
    chunk = ray.get(actor.chunk.remote(0, 22, 0, 1))  # task 0: start, 2 x 10 batches of 20 rows, end
    assert isinstance(chunk, Chunk)
    assert chunk.x.dtype == np.uint8 and chunk.x.flags.c_contiguous and chunk.x.shape == (20 * 20, 64)
    assert not chunk.x.flags.writeable  # zero-copy: backed by Ray's object store
    events = chunk.events()
    rows = [e.rows for e in events if isinstance(e, TrainRows)]
    assert len(rows) == 20 and rows[3].x.data_ptr() == torch.from_numpy(chunk.x[60:80]).data_ptr()


def test_prefetch_is_bounded(actor):
    """Backpressure: a consumer that stops asking stops the actor; in flight stays <= prefetch."""
    chunk, prefetch = 2, 3
    before = ray.get(actor.served.remote())
    remote = RemoteFeed(actor, 0, 1, chunk_batches=chunk, prefetch=prefetch)
    events = remote.events()
    consumed = list(itertools.islice(events, 9))  # into the 5th chunk
    time.sleep(0.5)  # a producer free to run ahead would fill the stream now
    served = ray.get(actor.served.remote()) - before
    assert len(consumed) == 9
    assert served <= -(-9 // chunk) + prefetch, served
    time.sleep(0.3)
    assert ray.get(actor.served.remote()) - before == served
