"""The function every learner process runs (``worker_group.py``): build a ``Learner`` and
follow the stream, checkpointing at task boundaries.

At every ``engine.checkpoint_every``-th task boundary (and after the last task) the
learner's state is captured (collectively) and rank 0 writes it to the run's
``CheckpointStore`` in the background. A group restarted after a failure
(``engine.max_failures``), or a run resumed with ``lifelong run --resume``, starts from the
latest complete checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from lifelong.platform.checkpoint_store import CheckpointStore
from lifelong.platform.runlog import console_logging

def train_loop_per_worker(rank: int, world_size: int, payload: dict[str, Any]) -> None:
    from lifelong.platform import checkpoint
    from lifelong.platform.config import build_config
    from lifelong.platform.learner import Learner
    from lifelong.platform.tracking import Tracker

    entered = time.time()
    console_logging()  # our warnings reach a quiet console; the rest goes to the run's log
    torch.set_num_threads(payload["threads"])
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    cfg = build_config(payload["config"])
    tracker = (Tracker(payload["tracking_uri"], payload["run_id"], Path(payload["spool_dir"]),
                       background=True) if rank == 0 else None)
    board = payload.get("progress")
    progress = (lambda event: board.push.remote(event)) if board is not None else None
    feed = None
    if payload.get("stream") is not None:  # the run's stream actor (the driver always starts one)
        from lifelong.platform.stream_actor import RemoteFeed

        feed = RemoteFeed(payload["stream"], rank, world_size,
                          cfg.stream.chunk_batches, cfg.stream.prefetch)
    learner = Learner(cfg, rank, world_size, tracker=tracker, progress=progress, feed=feed)
    store = CheckpointStore(payload["checkpoints"])
    saved = store.latest()
    if saved is not None:
        state = checkpoint.read(saved, cfg)
        checkpoint.restore(learner, state)
        if tracker is not None:
            tracker.metrics({"fault/resumed_from_task": state["next_task"]}, step=learner.result.steps,
                            flush=True)
    learner.at_boundary = _checkpoint_at_boundary(rank, store, cfg.engine.checkpoint_every)
    built = time.time()
    result = learner.run()
    store.close()  # the last boundary's checkpoint is on disk before the run counts as done
    if tracker is not None:
        if result.first_step_at is not None:
            t0 = payload["t0"]
            tracker.metrics({"time/worker_started_seconds": entered - t0,  # since `lifelong run` began
                             "time/learner_built_seconds": built - t0,  # + data, model, DeepSpeed
                             "time/startup_seconds": result.first_step_at - t0,  # + eval at init
                             "time/total_seconds": time.time() - t0}, step=0, flush=True)
        tracker.close()  # delivers anything spooled while the server was down, or says where it is


def _checkpoint_at_boundary(rank: int, store: CheckpointStore, every: int = 1) -> Callable[[Any], None]:
    """At every ``every``-th task boundary and the last: capture on every rank (collective);
    rank 0 writes it."""
    from lifelong.platform import checkpoint
    from lifelong.platform.boundaries import due_after

    def at_boundary(learner: Any) -> None:
        if not due_after(len(learner.result.R) - 1, len(learner.spec.tasks), every):
            return
        state = checkpoint.capture(learner)
        if rank == 0:
            store.save(state)

    return at_boundary

