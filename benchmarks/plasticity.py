"""Loss of plasticity, and what it costs to watch and to fix (docs/plasticity.md).

Runs configs/online_permuted_mnist_cbp.yaml twice through the real path (stream actor,
DeepSpeed worker, MLflow), with continual backprop and with plain backprop, and prints:
- new-task accuracy (R[i][i], and online accuracy) over the first and last tasks, per method;
- the probe overhead at the default probes.every: probe time / the rest of the run;
- continual backprop's step time over backprop's: end to end (train seconds per step of
  the two runs) and isolated (the plain torch engine, the same batches, interleaved rounds).

    .venv/bin/python benchmarks/plasticity.py [key=value overrides, e.g. stream.n_tasks=20]

It also writes both runs' new-task curves and plasticity plots to docs/images/ (the
pictures docs/plasticity.md shows) with the raw curves as JSON beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time

import torch
from mlflow.tracking import MlflowClient

from _runs import ROOT, measured_run, scratch_cwd

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lifelong.platform.config import load_config  # noqa: E402
from lifelong.platform.driver import RunOutcome  # noqa: E402
from lifelong.platform.learner import Learner  # noqa: E402
from lifelong.platform.tracking import read_matrix  # noqa: E402
from lifelong.streams.batches import Samples  # noqa: E402

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
CONFIG = "online_permuted_mnist_cbp.yaml"
IMAGES = ROOT / "docs" / "images"
METHODS = {"backprop": ["strategy.name=naive", "optim.weight_decay=0"], "cbp": []}
EDGE = 5  # tasks averaged at each end of the stream
LARGER = ["model.hidden=[400,400]", "train.batch_size=128"]  # the platform's default model and batch


def new_task_curves(uri: str, run_id: str) -> tuple[list[float], list[float]]:
    R = read_matrix(uri, run_id)["R"]
    online = sorted(MlflowClient(uri).get_metric_history(run_id, "acc/online"), key=lambda m: m.step)
    return [R[i][i] for i in range(len(R))], [m.value for m in online]


def step_seconds(m: dict[str, float]) -> float:
    """Seconds per optimizer step, not counting time blocked on the stream actor."""
    return (m["time/train_seconds"] - m["stream/wait_seconds"]) / m["time/steps"]


def isolated_step_ratio(overrides: list[str], steps: int = 200, rounds: int = 5) -> float:
    """CBP / backprop seconds per step on the plain engine: same batches, alternating rounds."""
    plain = ["engine.backend=torch", "probes.enabled=false", "stream.n_tasks=1"]
    learners = {name: Learner(load_config(ROOT / "configs" / CONFIG, overrides + extra + plain))
                for name, extra in METHODS.items()}
    first = next(iter(learners.values()))
    samples = Samples.of(first.feed.server.stream.tasks[0])
    size = first.cfg.train.batch_size
    fits = len(samples) // size
    batches = [first.featurize(samples[torch.arange((i % fits) * size, (i % fits + 1) * size)])
               for i in range(steps)]
    times: dict[str, list[float]] = {name: [] for name in learners}
    for _ in range(rounds):
        for name, learner in learners.items():
            started = time.perf_counter()
            for batch in batches:
                learner.train_step(batch)
            times[name].append(time.perf_counter() - started)
    return statistics.median(times["cbp"]) / statistics.median(times["backprop"])


def comparison_figure(curves: dict[str, dict[str, list[float]]]) -> "plt.Figure":
    """Both runs' new-task curves: online (bold) and test after the task (faint)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.0), dpi=110)
    for name, curve in curves.items():
        line, = ax.plot(curve["online"], label=f"{name}: online")
        ax.plot(curve["test"], color=line.get_color(), alpha=0.35, linewidth=0.8,
                label=f"{name}: test, after the task")
    ax.set_xlabel("task index")
    ax.set_ylabel("accuracy on the new task")
    ax.set_title(f"Online Permuted MNIST: new-task accuracy over {len(curve['test'])} tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_pictures(got: dict, runs: dict[str, RunOutcome]) -> None:
    """The comparison figure, each run's plasticity plot, and the curves as JSON."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    curves = {name: {"test": test, "online": online} for name, (_, test, online) in got.items()}
    (IMAGES / "loss_of_plasticity.json").write_text(json.dumps(curves))
    fig = comparison_figure(curves)
    fig.savefig(IMAGES / "loss_of_plasticity.png")
    plt.close(fig)
    for name, outcome in runs.items():
        local = MlflowClient(outcome.tracking_uri).download_artifacts(outcome.run_id, "plots/plasticity.png")
        shutil.copy(local, IMAGES / f"plasticity_{name}.png")


def main() -> None:
    overrides = sys.argv[1:]
    got, runs = {}, {}
    with scratch_cwd():
        for name, extra in METHODS.items():
            cfg, outcome, metrics = measured_run(CONFIG, overrides + extra)
            got[name] = (metrics, *new_task_curves(outcome.tracking_uri, outcome.run_id))
            runs[name] = outcome
        save_pictures(got, runs)
    print(f"\n{'':10s}{'tasks':>6s}{'new-task acc first':>20s}{'last':>8s}{'online first':>14s}"
          f"{'last':>8s}{'ms/step':>9s}{'probes/train':>14s}{'probes/run':>12s}")
    for name, (m, test, online) in got.items():
        ms = 1000 * step_seconds(m)
        print(f"{name:10s}{len(test):6d}{100 * statistics.mean(test[:EDGE]):19.1f}%"
              f"{100 * statistics.mean(test[-EDGE:]):7.1f}%{100 * statistics.mean(online[:EDGE]):13.1f}%"
              f"{100 * statistics.mean(online[-EDGE:]):7.1f}%{ms:9.2f}"
              f"{100 * m['time/probe_seconds'] / m['time/train_seconds']:13.1f}%"
              f"{100 * m['time/probe_overhead']:11.1f}%")
    print(f"(first/last = mean over the first/last {EDGE} tasks; ms/step = training time without "
          f"stream waits; probes/train = all probe time (steps and task ends) / optimizer-step "
          f"time, probes/run = probe time / the rest of the run, at probes.every={cfg.probes.every})")
    (bp, *_), (cbp, *_) = got["backprop"], got["cbp"]
    end_to_end = step_seconds(cbp) / step_seconds(bp)
    print(f"cbp step time / backprop step time: {end_to_end:.2f} end to end, "
          f"{isolated_step_ratio(overrides):.2f} isolated (plain engine, same batches); "
          f"{isolated_step_ratio(overrides + LARGER):.2f} isolated at {' '.join(LARGER)}")


if __name__ == "__main__":
    main()
