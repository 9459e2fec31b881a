"""MLflow tracking with explicit run ids (no global ``mlflow.start_run`` state).

The driver creates the run and ends it; rank 0 of the learners logs into it. Every
artifact is re-logged at each task boundary, so a run that dies keeps what it had.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

import lifelong
from lifelong.metrics.continual import summarize
from lifelong.platform import plots
from lifelong.platform.background import SerialExecutor
from lifelong.platform.config import RunConfig, flatten, to_yaml
from lifelong.platform.spool import Spool, brief, http_limits, unreachable
from lifelong.platform.tracking_uri import default_artifact_location, resolve_uri  # noqa: F401 (API)

log = logging.getLogger(__name__)

MATRIX_ARTIFACT = "accuracy_matrix.json"
SPOOL_ROOT = Path(".lifelong/spool")
RETRY_MIN_S, RETRY_MAX_S = 2.0, 60.0  # between delivery attempts while the server is down


def start_run(cfg: RunConfig, uri: str, artifact_location: Optional[str]) -> str:
    """Create (or reuse) the experiment and a new run holding params, tags and config."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(cfg.tracking.experiment,
                                                 artifact_location=artifact_location)
    else:
        experiment_id = experiment.experiment_id
    s = cfg.stream
    stream_name = f"{s.scenario}_{s.dataset}_{s.setting}"
    tags = {"strategy": cfg.strategy.name, "stream": stream_name,
            "lifelong.version": lifelong.__version__, "mlflow.source.git.commit": _git_commit()}
    run = client.create_run(experiment_id, run_name=cfg.tracking.run_name or default_run_name(cfg),
                            tags={k: v for k, v in tags.items() if v})
    params = [Param(k, v[:6000]) for k, v in flatten(cfg).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    client.log_text(run.info.run_id, to_yaml(cfg), "config.yaml")
    return run.info.run_id


def default_run_name(cfg: RunConfig) -> str:
    """What the run is, readable side by side in the runs table: ``ewc-permuted_mnist-s0``
    (strategy, stream, seed). A strategy given by path is named by its class."""
    strategy = cfg.strategy.name.replace(":", ".").rsplit(".", 1)[-1]
    return f"{strategy}-{cfg.stream.scenario}_{cfg.stream.dataset}-s{cfg.seed}"


def end_run(uri: str, run_id: str, status: str) -> None:
    with http_limits(retries=2):
        MlflowClient(uri).set_terminated(run_id, status=status)


class Tracker:
    """Rank 0's handle on the run: train curves, per-task metrics, matrix and plots.

    Training never waits on the server: while it is unreachable (refused, timing out, 5xx)
    whatever cannot be sent is appended to a local spool, ``.lifelong/spool/<run_id>/``
    under the working directory (see ``spool.py``), and delivered in order, before anything
    newer, once it answers again: tried at most every few seconds while it is down, and by
    ``close()``. Timestamps and steps are fixed at log time, so nothing moves.

    With ``background=True`` (the learner's tracker) every delivery and plot render runs,
    in order, on one background thread, so a task boundary does not wait for MLflow or
    matplotlib; ``close()`` waits for all of it."""

    def __init__(self, uri: str, run_id: str, spool_dir: Optional[Path] = None,
                 background: bool = False) -> None:
        self.client = MlflowClient(uri)
        self._serial = SerialExecutor("lifelong-tracking") if background else None
        self.render_seconds = 0.0  # spent drawing plots so far (the learner budgets them)
        self.uri, self.run_id = uri, run_id
        self.spool = Spool(Path(spool_dir) if spool_dir else (SPOOL_ROOT / run_id).resolve())
        self._pending: list[Metric] = []
        self._down = False
        self._retry_at, self._backoff = 0.0, RETRY_MIN_S

    def metrics(self, values: dict[str, float], step: int, flush: bool = False) -> None:
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in values.items()]
        if flush or len(self._pending) >= 200:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._later(self._send_chunks, pending)

    def _send_chunks(self, metrics: list[Metric]) -> None:
        for i in range(0, len(metrics), 1000):
            self._send_batch(metrics[i:i + 1000])

    def _later(self, job: Callable[..., None], *args: object) -> None:
        """Run ``job`` now, or on the background thread after everything submitted before."""
        if self._serial is None:
            job(*args)
        else:
            self._serial.submit(job, *args)

    def task_end(self, R: Sequence[Sequence[float]], init: Sequence[float], stream: str,
                 online: Sequence[float] = (), render: bool = True, figures: bool = True) -> None:
        """After training task i = len(R)-1: per-task accuracies and summaries, in one
        ``log_batch`` with whatever else is pending (the matrix row is hundreds of metrics on
        long streams); then the matrix and the pictures (if ``render``). Entries that were
        not evaluated (NaN, see ``learner.py``) are not logged."""
        i = len(R) - 1
        now = int(time.time() * 1000)
        values = {f"acc/task_{j}": acc for j, acc in enumerate(R[i]) if not math.isnan(acc)}
        values.update({f"cl/{k}": v for k, v in summarize(R, init).items()})
        if not math.isnan(R[i][i]):
            values["acc/new_task"] = R[i][i]
        if i == 0:
            self._pending += [Metric(f"init_acc/task_{j}", float(a), now, 0) for j, a in enumerate(init)]
        self._pending += [Metric(k, float(v), now, i) for k, v in values.items()]
        self.flush()
        if render:  # long streams: the matrix goes with the pictures, a few dozen times a run
            self._later(self._render, [list(r) for r in R], list(init), stream, list(online), figures)

    def _render(self, R: Sequence[Sequence[float]], init: Sequence[float], stream: str,
                online: Sequence[float], figures: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            matrix = Path(tmp) / MATRIX_ARTIFACT
            matrix.write_text(matrix_json(R, init))
            self._send_artifact(matrix, None)
            if not figures:
                return
            figures = [("accuracy_heatmap.png", plots.accuracy_heatmap(R, stream)),
                       ("accuracy_over_time.png", plots.accuracy_over_time(R, init, stream)),
                       ("new_task_accuracy.png", plots.new_task_accuracy(R, online, stream))]
            for name, fig in figures:
                self._send_figure(fig, name, Path(tmp))

    def plasticity(self, history: Sequence[tuple[int, dict[str, float]]], task_starts: Sequence[int],
                   stream: str) -> None:
        """The plasticity probes so far as one picture, ``plots/plasticity.png``."""
        self._later(self._render_plasticity, list(history), list(task_starts), stream)

    def _render_plasticity(self, history: Sequence[tuple[int, dict[str, float]]],
                           task_starts: Sequence[int], stream: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self._send_figure(plots.plasticity_curves(history, task_starts, stream), "plasticity.png",
                              Path(tmp))

    def matrices(self, named: dict[str, Any]) -> None:
        """A strategy's reported matrices (``Strategy.matrices``): ``strategy/<name>.json`` and
        ``plots/<name>.png``."""
        if named:
            self._later(self._render_matrices, dict(named))

    def _render_matrices(self, named: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, m in named.items():
                table = Path(tmp) / f"{name}.json"
                table.write_text(json.dumps({"rows": m.row_label, "columns": m.column_label,
                                             "title": m.title, "values": m.values}))
                self._send_artifact(table, "strategy")
                self._send_figure(plots.matrix_heatmap(m.values, m.row_label, m.column_label, m.title),
                                  f"{name}.png", Path(tmp))

    def _send_figure(self, fig: "plots.Figure", name: str, tmp: Path) -> None:
        started = time.perf_counter()
        fig.savefig(tmp / name)
        plots.close(fig)
        self.render_seconds += time.perf_counter() - started  # with the drawing, roughly
        self._send_artifact(tmp / name, "plots")

    def tags(self, values: dict[str, str]) -> None:
        if values:
            self._later(self._send_batch, [], {k: str(v) for k, v in values.items()})

    def close(self) -> bool:
        """Send what is buffered and spooled. True if the server has everything; otherwise the
        spool stays on disk (one warning line says where) for ``deliver_spool``."""
        self.flush()
        if self._serial is not None:
            self._serial.wait()
        if self.spool.pending() and not self._drain(force=True):
            log.warning("MLflow server %s still unreachable: run %s's tracking data is kept in %s; "
                        "deliver it later with lifelong.platform.tracking.deliver_spool(%r, %r)",
                        self.uri, self.run_id, self.spool.dir, self.uri, str(self.spool.dir))
            return False
        return True

    # -- delivery --------------------------------------------------------------------------------
    def _send_batch(self, metrics: list[Metric], tags: Optional[dict[str, str]] = None) -> None:
        run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        if not self._now(lambda: self.client.log_batch(self.run_id, metrics=metrics, tags=run_tags,
                                                       synchronous=True)):
            self.spool.add_batch(metrics, tags)

    def _send_artifact(self, local_file: Path, artifact_path: Optional[str]) -> None:
        if not self._now(lambda: self.client.log_artifact(self.run_id, str(local_file), artifact_path)):
            self.spool.add_artifact(local_file, artifact_path)

    def _now(self, call: Callable[[], None]) -> bool:
        """Make the call after whatever is spooled; False (spool it) while the server is down."""
        if self.spool.pending() and not self._drain():
            return False
        try:
            with http_limits():
                call()
        except Exception as err:
            if not unreachable(err):
                raise
            self._went_down(err)
            return False
        self._down = False
        return True

    def _drain(self, force: bool = False) -> bool:
        """Deliver the spool; True once it is empty."""
        if not force and time.monotonic() < self._retry_at:
            return False
        try:
            with http_limits():
                self.spool.deliver(self.client, self.run_id)
        except Exception as err:
            if not unreachable(err):
                raise
            self._went_down(err)
            return False
        if self._down:
            log.warning("MLflow server %s is back: spooled tracking data delivered", self.uri)
        self._down, self._backoff = False, RETRY_MIN_S
        return True

    def _went_down(self, err: BaseException) -> None:
        if not self._down:
            log.warning("MLflow server %s unreachable (%s): spooling to %s, training goes on",
                        self.uri, brief(err), self.spool.dir)
            self._down, self._backoff = True, RETRY_MIN_S
        else:
            self._backoff = min(self._backoff * 2, RETRY_MAX_S)
        self._retry_at = time.monotonic() + self._backoff


def deliver_spool(uri: str, spool_dir: str | Path) -> bool:
    """Deliver tracking data a run spooled while its server was down: ``spool_dir`` is one
    run's ``.lifelong/spool/<run_id>`` (the run id is the folder's name) or ``.lifelong/spool``
    for all of them. Delivered records are removed; True when nothing is left to deliver.
    A plain function, e.g. ``python -c 'from lifelong.platform.tracking import deliver_spool;
    deliver_spool("http://mlflow:5000", ".lifelong/spool")'`` (no CLI command of its own)."""
    root = Path(spool_dir)
    runs = [root] if (root / "spool.jsonl").exists() else (
        sorted(p for p in root.iterdir() if (p / "spool.jsonl").exists()) if root.is_dir() else [])
    client, done = MlflowClient(uri), True
    for directory in runs:
        try:
            with http_limits(retries=2):
                Spool(directory).deliver(client, directory.name)
            done = done and not Spool(directory).pending()
        except Exception as err:
            log.warning("could not deliver %s to %s (%s); it stays on disk", directory, uri, brief(err))
            done = False
    return done


def matrix_json(R: Sequence[Sequence[float]], init: Sequence[float]) -> str:
    """The matrix artifact: one row a line; an entry not evaluated (NaN) is ``null``."""
    def dump(row: Sequence[float]) -> str:
        return json.dumps([None if math.isnan(a) else a for a in row])

    rows = ",\n  ".join(dump(row) for row in R)
    return (f'{{"definition": "R[i][j] = test accuracy on task j after training task i; '
            f'null = not evaluated",\n "init": {dump(init)},\n "R": [\n  {rows}]}}\n')


def read_matrix(uri: str, run_id: str) -> Optional[dict]:
    """The latest accuracy matrix a run recorded (``null`` entries as NaN), or None."""
    client = MlflowClient(uri)
    try:
        with http_limits(retries=2):
            path = client.download_artifacts(run_id, MATRIX_ARTIFACT)
    except Exception:
        return None
    matrix = json.loads(Path(path).read_text())
    matrix["R"] = [[math.nan if a is None else a for a in row] for row in matrix["R"]]
    return matrix


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(lifelong.__file__).parent, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""
