"""The function every Ray Train worker runs: rebuild the config, run a ``Learner``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch


def train_loop_per_worker(payload: dict[str, Any]) -> None:
    import ray.train

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
