"""The function every Ray Train worker runs: rebuild the config, run a ``Learner``.

Checkpoint and resume live here: at every ``engine.checkpoint_every``-th task boundary
(and after the last task) the learner's state is captured
(collectively) and rank 0's copy is reported to Ray Train, which persists it. A worker
group that Ray Train restarts after a failure (``engine.max_failures``), or a run resumed
with ``lifelong run --resume``, starts from the latest one. An error that would only
happen again (divergence, a bad checkpoint) is recorded with the stream actor first, so a
restarted group stops at once instead of repeating it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from lifelong.platform.errors import LifelongError


def train_loop_per_worker(payload: dict[str, Any]) -> None:
    import ray

    stream = payload.get("stream")
    if stream is not None and (fatal := ray.get(stream.aborted.remote())) is not None:
        raise fatal
    try:
        _train(payload)
    except LifelongError as err:
        if stream is not None:
            ray.get(stream.abort.remote(err))
        raise


def _train(payload: dict[str, Any]) -> None:
    import ray.train

    from lifelong.platform import checkpoint
    from lifelong.platform.config import build_config
    from lifelong.platform.learner import Learner
    from lifelong.platform.tracking import Tracker

    entered = time.time()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(payload["threads"])
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    cfg = build_config(payload["config"])
    tracker = (Tracker(payload["tracking_uri"], payload["run_id"], Path(payload["spool_dir"]))
               if rank == 0 else None)
    board = payload.get("progress")
    progress = (lambda event: board.push.remote(event)) if board is not None else None
    feed = None
    if payload.get("stream") is not None:  # the run's stream actor (the driver always starts one)
        from lifelong.platform.stream_actor import RemoteFeed

        feed = RemoteFeed(payload["stream"], rank, world_size, cfg.train.eval_batch_size,
                          cfg.stream.chunk_batches, cfg.stream.prefetch)
    learner = Learner(cfg, rank, world_size, tracker=tracker, progress=progress, feed=feed)
    saved = ray.train.get_checkpoint()
    if saved is not None:
        with saved.as_directory() as directory:
            state = checkpoint.read(Path(directory) / checkpoint.FILE, cfg)
        checkpoint.restore(learner, state)
        if tracker is not None:
            tracker.metrics({"fault/resumed_from_task": state["next_task"]}, step=learner.result.steps,
                            flush=True)
    learner.at_boundary = _report_checkpoint(rank, cfg.engine.checkpoint_every)
    built = time.time()
    result = learner.run()
    if tracker is not None:
        if result.first_step_at is not None:
            t0 = payload["t0"]
            tracker.metrics({"time/worker_started_seconds": entered - t0,  # since `lifelong run` began
                             "time/learner_built_seconds": built - t0,  # + data, model, DeepSpeed
                             "time/startup_seconds": result.first_step_at - t0,  # + eval at init
                             "time/total_seconds": time.time() - t0}, step=0, flush=True)
        tracker.close()  # delivers anything spooled while the server was down, or says where it is


def _report_checkpoint(rank: int, every: int = 1) -> Callable[[Any], None]:
    """At every ``every``-th task boundary and the last: capture on every rank (collective),
    rank 0 writes, all report (Ray Train's report is a barrier and persists rank 0's
    directory). A restart or ``--resume`` goes back to the latest one."""
    import ray.train

    from lifelong.platform import checkpoint
    from lifelong.platform.learner import due_after

    def at_boundary(learner: Any) -> None:
        if not due_after(len(learner.result.R) - 1, len(learner.spec.tasks), every):
            return
        state = checkpoint.capture(learner)
        with tempfile.TemporaryDirectory() as tmp:
            saved = None
            if rank == 0:
                checkpoint.write(state, Path(tmp))
                saved = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"next_task": state["next_task"]}, checkpoint=saved)

    return at_boundary
