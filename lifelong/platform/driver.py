"""``lifelong run``: validate, start Ray and MLflow, train on a learner group, summarise.

Ray starts locally on 127.0.0.1 unless ``RAY_ADDRESS`` names a cluster (as it does
inside a submitted Ray job), see ``ray_session.py``. The MLflow run is created here, in a
thread while Ray starts, before any worker starts, and ended here: FINISHED, or FAILED
with everything logged so far kept.
``resume`` reopens a stopped run and goes on from its latest task-boundary checkpoint,
logging into the same MLflow run.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from rich.console import Console

from lifelong.platform import ray_session
from lifelong.platform.config import RunConfig, TrackingConfig, load_config, read_overrides
from lifelong.platform.checkpoint_store import run_directory
from lifelong.platform.errors import ConfigError, TrackingError, first_line
from lifelong.platform.preflight import check_data, check_supported
from lifelong.platform.runlog import RunLog
from lifelong.platform.tracking_uri import check_server, resolve_uri

# MLflow (about 2 s to import) is imported where it is used: the run is opened in a thread
# while Ray starts, so that import overlaps Ray's start-up instead of preceding it.


@dataclass
class RunOutcome:
    run_id: str
    tracking_uri: str
    R: list[list[float]]
    init: list[float]
    seconds: float


CHECKPOINTS_TAG = "lifelong.checkpoints"  # where a run's checkpoints live


def run(cfg: RunConfig, console: Optional[Console] = None, progress: bool = True,
        resume_id: Optional[str] = None, verbose: bool = False,
        redirect_fd: bool = False, started_at: Optional[float] = None) -> RunOutcome:
    """Validate, join or start Ray (while MLflow creates the run), train, and end the run.
    Third-party output goes to the run's log file (``runlog.py``) unless ``verbose``;
    ``redirect_fd`` (the CLI) also captures what the process writes to descriptor 2.
    ``started_at``: when the command began (the CLI's), so time/* metrics include imports."""
    console = console or Console()
    t0 = started_at or time.time()
    base = Path.cwd()
    check_supported(cfg)
    cfg = _absolute_paths(cfg, base)
    check_data(cfg)
    uri = resolve_uri(cfg.tracking.uri, base)
    check_server(uri)
    storage = Path(cfg.engine.storage_path or ".lifelong/ray").resolve()
    log = RunLog(verbose, redirect_fd, run_id=resume_id).start()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="lifelong-mlflow") as pool:
            opening = pool.submit(_open_run, cfg, uri, base, storage, resume_id, log)
            ray_session.connect()  # Ray starts while MLflow opens its store
            log.capture_ray()
            run_id = opening.result()
        log.name(run_id)
        verb = "resumes" if resume_id else "run"
        console.print(f"[bold]lifelong[/] {verb} [cyan]{run_id}[/] · strategy {cfg.strategy.name} · "
                      f"{cfg.engine.workers} worker(s), {cfg.engine.backend} ZeRO-{cfg.engine.zero_stage}",
                      soft_wrap=True)  # one line, wrapped by the terminal, never cut by rich
        status = "FAILED"
        try:
            _fit(cfg, uri, run_id, t0, console, progress, storage)
            status = "FINISHED"
        finally:
            _finish(uri, run_id, status, log, console)
    finally:
        log.stop()
    from lifelong.platform.tracking import read_matrix

    matrix = read_matrix(uri, run_id) or {"R": [], "init": []}
    return RunOutcome(run_id, uri, matrix["R"], matrix["init"], time.time() - t0)


def _open_run(cfg: RunConfig, uri: str, base: Path, storage: Path, resume_id: Optional[str],
              log: RunLog) -> str:
    """Create the MLflow run (or reopen the resumed one); one line if the store is unusable."""
    from mlflow.tracking import MlflowClient

    from lifelong.platform.spool import http_limits
    from lifelong.platform.tracking import default_artifact_location, start_run

    log.adopt("mlflow")  # MLflow's own stderr logger (store creation) into the run's log
    artifacts = cfg.tracking.artifact_location or default_artifact_location(uri, base)
    try:
        with http_limits(retries=1):
            if resume_id is None:
                run_id = start_run(cfg, uri, artifacts)
                MlflowClient(uri).set_tag(run_id, CHECKPOINTS_TAG, str(run_directory(storage, run_id)))
                return run_id
            MlflowClient(uri).update_run(resume_id, status="RUNNING")
            return resume_id
    except Exception as err:  # unreachable server, bad store: stop before any compute
        raise TrackingError(f"tracking.uri={uri}: cannot {'reopen' if resume_id else 'create'} the "
                            f"MLflow run ({first_line(err)[:200]})") from None


def _finish(uri: str, run_id: str, status: str, log: RunLog, console: Console) -> None:
    """The run's log as an artifact, then its status; a server that is down keeps neither
    from being reported, and loses nothing logged before."""
    from mlflow.tracking import MlflowClient

    from lifelong.platform.spool import http_limits
    from lifelong.platform.tracking import end_run

    try:
        with http_limits(retries=1):
            MlflowClient(uri).log_artifact(run_id, str(log.path), "logs")
    except Exception:  # noqa: BLE001 - the file stays on disk under .lifelong/logs
        pass
    try:
        end_run(uri, run_id, status)
    except Exception as err:  # server down: what was logged is kept, only the status is not
        console.print(f"warning: could not mark MLflow run {run_id} {status}: "
                      f"{' '.join(str(err).split())[:200]}", style="yellow", markup=False)


def resume(run_id: str, overrides: list[str], console: Optional[Console] = None,
           progress: bool = True, verbose: bool = False, redirect_fd: bool = False,
           started_at: Optional[float] = None) -> RunOutcome:
    """Go on with a stopped run from its latest checkpoint, into the same MLflow run. Its
    own config is used; overrides may change how it runs (``engine.*``), not what."""
    from mlflow.tracking import MlflowClient

    from lifelong.platform.spool import http_limits

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
    checkpoints = run_directory(Path(cfg.engine.storage_path or ".lifelong/ray").resolve(), run_id)
    if not checkpoints.is_dir():
        raise ConfigError(f"--resume {run_id}: no checkpoints at {checkpoints}; run from the "
                          f"directory it was started in, or set engine.storage_path")
    return run(cfg, console, progress, resume_id=run_id, verbose=verbose, redirect_fd=redirect_fd,
               started_at=started_at)


def _fit(cfg: RunConfig, uri: str, run_id: str, t0: float, console: Console, progress: bool,
         storage: Path) -> None:
    import ray

    from mlflow.tracking import MlflowClient

    from lifelong.platform.plugin_shipping import strategy_runtime_env
    from lifelong.platform.progress import ProgressBoard, run_with_progress
    from lifelong.platform.spool import http_limits
    from lifelong.platform.stream_actor import StreamActor
    from lifelong.platform.worker import train_loop_per_worker
    from lifelong.platform.worker_group import Placement, fit

    try:
        with http_limits(retries=1):
            MlflowClient(uri).log_metric(run_id, "time/ray_ready_seconds", time.time() - t0, step=0)
    except Exception:  # a timing point is not worth a failed run; the tracker spools the rest
        pass
    workers = cfg.engine.workers
    cpus = cfg.engine.cpus_per_worker or _cpus_per_worker(workers)
    # One GPU per worker where the cluster has them (NCCL), else gloo on CPUs.
    use_gpu = ray.cluster_resources().get("GPU", 0) >= workers
    board = ProgressBoard.remote() if progress else None
    plugin_env = strategy_runtime_env(cfg.strategy.name)  # the user's own strategy files, if any
    # The stream actor owns the data and outlives worker restarts (and keeps plugin_env pinned).
    stream = StreamActor.options(runtime_env=plugin_env).remote(cfg)
    payload = {"config": OmegaConf.to_container(OmegaConf.structured(cfg)), "tracking_uri": uri,
               "run_id": run_id, "t0": t0, "threads": cpus, "progress": board, "stream": stream,
               "spool_dir": str(Path(".lifelong/spool", run_id).resolve()),
               "checkpoints": str(run_directory(storage, run_id))}
    max_failures = cfg.engine.max_failures

    def restarted(attempt: int, why: str) -> None:
        console.print(f"lifelong: warning: {why}; restarting the learners from the last task "
                      f"boundary ({attempt} of {max_failures})", style="yellow", markup=False)

    def notice(message: str) -> None:
        console.print(f"lifelong: {message}", markup=False)

    def work() -> None:
        fit(train_loop_per_worker, payload, Placement(workers, cpus, use_gpu, plugin_env), max_failures,
            on_restart=restarted, notice=notice)

    try:
        if board is None:
            work()
        else:
            run_with_progress(work, board, console)
    finally:
        ray.kill(stream)


def _cpus_per_worker(workers: int) -> int:
    """Share the cluster's CPUs evenly, but never ask for more than one node has."""
    import ray

    per_node = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(min(sum(per_node) // workers, max(per_node, default=1))))


def _absolute_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Workers run in Ray's own directories: hand them absolute paths only."""
    if cfg.stream.data_dir:
        cfg = replace(cfg, stream=replace(cfg.stream, data_dir=str((base / cfg.stream.data_dir).resolve())))
    return cfg
