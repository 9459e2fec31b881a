"""MLflow tracking with explicit run ids (no global ``mlflow.start_run`` state).

The driver creates the run and ends it; rank 0 of the learners logs into it. Every
artifact is re-logged at each task boundary, so a run that dies keeps what it had.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

import lifelong
from lifelong.metrics.continual import summarize
from lifelong.platform import plots
from lifelong.platform.config import RunConfig, flatten, to_yaml

MATRIX_ARTIFACT = "accuracy_matrix.json"


def resolve_uri(uri: str, base: Path) -> str:
    """Make a relative ``sqlite:///x.db`` (or plain path) absolute, so workers whose
    working directory differs write to the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        return (base / uri).resolve().as_uri()
    return uri


def default_artifact_location(uri: str, base: Path) -> Optional[str]:
    """Local stores keep artifacts in ./mlartifacts; servers decide for themselves."""
    if uri.startswith(("sqlite:", "file:")):
        return (base / "mlartifacts").resolve().as_uri()
    return None


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
    run = client.create_run(experiment_id, run_name=cfg.tracking.run_name,
                            tags={k: v for k, v in tags.items() if v})
    params = [Param(k, v[:6000]) for k, v in flatten(cfg).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    client.log_text(run.info.run_id, to_yaml(cfg), "config.yaml")
    return run.info.run_id


def end_run(uri: str, run_id: str, status: str) -> None:
    MlflowClient(uri).set_terminated(run_id, status=status)


class Tracker:
    """Rank 0's handle on the run: train curves, per-task metrics, matrix and plots."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self._pending: list[Metric] = []

    def metrics(self, values: dict[str, float], step: int, flush: bool = False) -> None:
        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in values.items()]
        if flush or len(self._pending) >= 200:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            chunk, self._pending = self._pending[:1000], self._pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def task_end(self, R: Sequence[Sequence[float]], init: Sequence[float], stream: str) -> None:
        """After training task i = len(R)-1: per-task accuracies, summaries, artifacts."""
        i = len(R) - 1
        values = {f"acc/task_{j}": acc for j, acc in enumerate(R[i])}
        values.update({f"cl/{k}": v for k, v in summarize(R, init).items()})
        values["acc/new_task"] = R[i][i]
        if i == 0:
            self.metrics({f"init_acc/task_{j}": a for j, a in enumerate(init)}, step=0)
        self.metrics(values, step=i, flush=True)
        self.client.log_dict(self.run_id, {"R": [list(r) for r in R], "init": list(init),
                                           "definition": "R[i][j] = test accuracy on task j "
                                                         "after training task i"}, MATRIX_ARTIFACT)
        for name, fig in (("accuracy_heatmap.png", plots.accuracy_heatmap(R, stream)),
                          ("accuracy_over_time.png", plots.accuracy_over_time(R, init, stream))):
            self.client.log_figure(self.run_id, fig, f"plots/{name}")
            plots.close(fig)

    def tags(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            self.client.set_tag(self.run_id, k, v)


def read_matrix(uri: str, run_id: str) -> Optional[dict]:
    """The latest accuracy matrix a run recorded, or None."""
    client = MlflowClient(uri)
    try:
        path = client.download_artifacts(run_id, MATRIX_ARTIFACT)
    except Exception:
        return None
    return json.loads(Path(path).read_text())


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(lifelong.__file__).parent, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""
