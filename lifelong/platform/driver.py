"""``lifelong run``: validate, start Ray and MLflow, train on Ray Train workers, summarise.

Ray starts embedded on 127.0.0.1 unless ``RAY_ADDRESS`` names a cluster (as it does
inside a submitted Ray job). The MLflow run is created here, before any worker
starts, and ended here: FINISHED, or FAILED with everything logged so far kept.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from rich.console import Console

from lifelong.platform.config import RunConfig
from lifelong.platform.errors import TrackingError, first_line, unwrap_worker_error
from lifelong.platform.preflight import check_data, check_supported
from lifelong.platform.spool import http_limits
from lifelong.platform.tracking import (default_artifact_location, end_run, read_matrix,
                                        resolve_uri, start_run)


@dataclass
class RunOutcome:
    run_id: str
    tracking_uri: str
    R: list[list[float]]
    init: list[float]
    seconds: float


def run(cfg: RunConfig, console: Optional[Console] = None, progress: bool = True) -> RunOutcome:
    console = console or Console()
    t0 = time.time()
    base = Path.cwd()
    check_supported(cfg)
    cfg = _absolute_paths(cfg, base)
    check_data(cfg)
    uri = resolve_uri(cfg.tracking.uri, base)
    artifacts = cfg.tracking.artifact_location or default_artifact_location(uri, base)
    try:
        with http_limits(retries=1):
            run_id = start_run(cfg, uri, artifacts)
    except Exception as err:  # unreachable server, bad store: stop before any compute
        raise TrackingError(f"tracking.uri={uri}: cannot create the MLflow run "
                            f"({first_line(err)[:200]})") from None
    console.print(f"[bold]lifelong[/] run [cyan]{run_id}[/] · strategy {cfg.strategy.name} · "
                  f"{cfg.engine.workers} worker(s), {cfg.engine.backend} ZeRO-{cfg.engine.zero_stage}")
    status = "FAILED"
    try:
        _fit(cfg, uri, run_id, t0, console, progress)
        status = "FINISHED"
    finally:
        try:
            end_run(uri, run_id, status)
        except Exception as err:  # server down: what was logged is kept, only the status is not
            console.print(f"warning: could not mark MLflow run {run_id} {status}: "
                          f"{' '.join(str(err).split())[:200]}", style="yellow", markup=False)
    matrix = read_matrix(uri, run_id) or {"R": [], "init": []}
    return RunOutcome(run_id, uri, matrix["R"], matrix["init"], time.time() - t0)


def _fit(cfg: RunConfig, uri: str, run_id: str, t0: float, console: Console, progress: bool) -> None:
    import ray
    from mlflow.tracking import MlflowClient
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from lifelong.platform.progress import ProgressBoard, run_with_progress
    from lifelong.platform.stream_actor import StreamActor
    from lifelong.platform.worker import train_loop_per_worker

    _init_ray()
    try:
        with http_limits(retries=1):
            MlflowClient(uri).log_metric(run_id, "time/ray_ready_seconds", time.time() - t0, step=0)
    except Exception:  # a timing point is not worth a failed run; the tracker spools the rest
        pass
    workers = cfg.engine.workers
    cpus = cfg.engine.cpus_per_worker or _cpus_per_worker(workers)
    # One GPU per worker where the cluster has them (Ray Train then picks NCCL), else gloo on CPUs.
    use_gpu = ray.cluster_resources().get("GPU", 0) >= workers
    board = ProgressBoard.remote() if progress else None
    stream = StreamActor.remote(cfg)  # owns the data; outlives worker restarts
    payload = {"config": OmegaConf.to_container(OmegaConf.structured(cfg)), "tracking_uri": uri,
               "run_id": run_id, "t0": t0, "threads": cpus, "progress": board, "stream": stream,
               "spool_dir": str(Path(".lifelong/spool", run_id).resolve())}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=payload,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {})}),
        run_config=RayRunConfig(name=f"lifelong-{run_id}",
                                storage_path=str(Path(".lifelong/ray").resolve())),
    )
    try:
        if board is None:
            trainer.fit()
        else:
            run_with_progress(trainer.fit, board, console)
    except TrainingFailedError as err:
        raise unwrap_worker_error(err) from None
    finally:
        ray.kill(stream)


def _cpus_per_worker(workers: int) -> int:
    """Share the cluster's CPUs evenly, but never ask for more than one node has."""
    import ray

    per_node = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(min(sum(per_node) // workers, max(per_node, default=1))))


def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True,
                 dashboard_host="127.0.0.1", configure_logging=False, log_to_driver=True)


def _absolute_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Workers run in Ray's own directories: hand them absolute paths only."""
    if cfg.stream.data_dir:
        cfg = replace(cfg, stream=replace(cfg.stream, data_dir=str((base / cfg.stream.data_dir).resolve())))
    return cfg
