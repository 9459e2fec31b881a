"""``lifelong run``: validate, start Ray and MLflow, train on Ray Train workers, summarise.

Ray starts embedded on 127.0.0.1 unless ``RAY_ADDRESS`` names a cluster (as it does
inside a submitted Ray job). The MLflow run is created here, before any worker
starts, and ended here: FINISHED, or FAILED with everything logged so far kept.
``resume`` reopens a stopped run and goes on from its latest task-boundary checkpoint,
logging into the same MLflow run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from rich.console import Console

from lifelong.platform.config import RunConfig, TrackingConfig, load_config, read_overrides
from lifelong.platform.errors import ConfigError, TrackingError, first_line, unwrap_worker_error
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


CHECKPOINTS_TAG = "lifelong.checkpoints"  # where a run's Ray Train checkpoints live


def run(cfg: RunConfig, console: Optional[Console] = None, progress: bool = True,
        resume_id: Optional[str] = None) -> RunOutcome:
    console = console or Console()
    t0 = time.time()
    base = Path.cwd()
    check_supported(cfg)
    cfg = _absolute_paths(cfg, base)
    check_data(cfg)
    uri = resolve_uri(cfg.tracking.uri, base)
    storage = Path(cfg.engine.storage_path or ".lifelong/ray").resolve()
    artifacts = cfg.tracking.artifact_location or default_artifact_location(uri, base)
    try:
        with http_limits(retries=1):
            if resume_id is None:
                run_id = start_run(cfg, uri, artifacts)
                MlflowClient(uri).set_tag(run_id, CHECKPOINTS_TAG, str(storage / f"lifelong-{run_id}"))
            else:
                run_id = resume_id
                MlflowClient(uri).update_run(run_id, status="RUNNING")
    except Exception as err:  # unreachable server, bad store: stop before any compute
        raise TrackingError(f"tracking.uri={uri}: cannot {'reopen' if resume_id else 'create'} the "
                            f"MLflow run ({first_line(err)[:200]})") from None
    verb = "resumes" if resume_id else "run"
    console.print(f"[bold]lifelong[/] {verb} [cyan]{run_id}[/] · strategy {cfg.strategy.name} · "
                  f"{cfg.engine.workers} worker(s), {cfg.engine.backend} ZeRO-{cfg.engine.zero_stage}")
    status = "FAILED"
    try:
        _fit(cfg, uri, run_id, t0, console, progress, storage)
        status = "FINISHED"
    finally:
        try:
            end_run(uri, run_id, status)
        except Exception as err:  # server down: what was logged is kept, only the status is not
            console.print(f"warning: could not mark MLflow run {run_id} {status}: "
                          f"{' '.join(str(err).split())[:200]}", style="yellow", markup=False)
    matrix = read_matrix(uri, run_id) or {"R": [], "init": []}
    return RunOutcome(run_id, uri, matrix["R"], matrix["init"], time.time() - t0)


def resume(run_id: str, overrides: list[str], console: Optional[Console] = None,
           progress: bool = True) -> RunOutcome:
    """Go on with a stopped run from its latest checkpoint, into the same MLflow run. Its
    own config is used; overrides may change how it runs (``engine.*``), not what."""
    raw = read_overrides(overrides)
    uri = resolve_uri(str(raw.get("tracking", {}).get("uri", TrackingConfig.uri)), Path.cwd())
    client = MlflowClient(uri)
    try:
        with http_limits(retries=1):
            stored = client.get_run(run_id)
            config_file = client.download_artifacts(run_id, "config.yaml")
    except Exception as err:
        raise ConfigError(f"--resume {run_id}: no such run with a config in {uri} "
                          f"({first_line(err)[:160]})") from None
    cfg = load_config(config_file, overrides)
    where = stored.data.tags.get(CHECKPOINTS_TAG)
    if cfg.engine.storage_path is None and where:  # where the run itself kept them
        cfg = replace(cfg, engine=replace(cfg.engine, storage_path=str(Path(where).parent)))
    checkpoints = Path(cfg.engine.storage_path or ".lifelong/ray").resolve() / f"lifelong-{run_id}"
    if not checkpoints.is_dir():
        raise ConfigError(f"--resume {run_id}: no checkpoints at {checkpoints}; run from the "
                          f"directory it was started in, or set engine.storage_path")
    return run(cfg, console, progress, resume_id=run_id)


def _fit(cfg: RunConfig, uri: str, run_id: str, t0: float, console: Console, progress: bool,
         storage: Path) -> None:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig, TrainingFailedError
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    from lifelong.platform.plugin_shipping import strategy_runtime_env
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
    plugin_env = strategy_runtime_env(cfg.strategy.name)  # the user's own strategy files, if any
    # The stream actor owns the data and outlives worker restarts (and keeps plugin_env pinned).
    stream = StreamActor.options(runtime_env=plugin_env).remote(cfg)
    payload = {"config": OmegaConf.to_container(OmegaConf.structured(cfg)), "tracking_uri": uri,
               "run_id": run_id, "t0": t0, "threads": cpus, "progress": board, "stream": stream,
               "spool_dir": str(Path(".lifelong/spool", run_id).resolve())}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=payload,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {})}),
        # The same name and storage on --resume: Ray Train then hands back the latest checkpoint.
        run_config=RayRunConfig(name=f"lifelong-{run_id}", storage_path=str(storage),
                                failure_config=FailureConfig(max_failures=cfg.engine.max_failures),
                                checkpoint_config=CheckpointConfig(num_to_keep=2),
                                worker_runtime_env=plugin_env),
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
