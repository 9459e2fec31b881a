"""GateON on 100 permuted-MNIST tasks, against EWC and plain fine-tuning (docs/gateon.md).

Runs configs/permuted_mnist_100_gateon.yaml through the real path (stream actor, DeepSpeed
worker, MLflow) as shipped, without re-activation (strategy.eps=0), and with
``strategy.name=ewc`` and ``naive`` on the same stream; then the unsupervised variant
(``strategy.context=detect``) on a shorter stream whose tasks are long enough for its
confidence to build up. Prints, per run:
- mean accuracy over all tasks after the last one (ACC);
- new-task accuracy (R[i][i]) over the first and the last 10 tasks;
- the fraction of hidden units still available at the end (GateON);
- detection recall, precision and delay (context=detect).

    .venv/bin/python benchmarks/gateon.py [key=value overrides for every run, e.g. stream.n_tasks=20]

It writes the pictures docs/gateon.md shows to docs/images/gateon_*.png, with the raw
curves in docs/images/gateon_results.json.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from _runs import ROOT, measured_run, scratch_cwd

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lifelong.platform.tracking import read_matrix  # noqa: E402

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
CONFIG = "permuted_mnist_100_gateon.yaml"
IMAGES = ROOT / "docs" / "images"
BASELINE_OPTIM = ["optim.lr=0.001"]  # what EWC and fine-tuning train best with here (Adam)
RUNS = {
    "gateon": [],
    "gateon, no re-activation": ["strategy.eps=0"],
    "ewc": ["strategy.name=ewc", "strategy.lam=50", *BASELINE_OPTIM],
    "naive": ["strategy.name=naive", *BASELINE_OPTIM],
}
# Detection needs tasks longer than the confidence ramp (~460 steps at the code's rate 0.005).
DETECT = ["strategy.context=detect", "strategy.ratio=3", "stream.n_tasks=10", "stream.train_samples_per_task=48000",
          "eval.tasks=all"]
EDGE = 10  # tasks averaged at each end of the stream


def curves(uri: str, run_id: str) -> dict:
    """What the pictures need from one run, read back from MLflow."""
    client = MlflowClient(uri)
    R = read_matrix(uri, run_id)["R"]
    n = len(R)
    out: dict = {"R_last": R[-1], "new_task": [R[i][i] for i in range(n)],
                 "mean_seen": [sum(R[i][:i + 1]) / (i + 1) for i in range(n)]}
    metrics = client.get_run(run_id).data.metrics
    out["metrics"] = {k: v for k, v in metrics.items() if k.startswith("gateon/")}
    for key in [k for k in metrics if k.startswith("gateon/available")]:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        out.setdefault("available", {})[key.removeprefix("gateon/available").lstrip("/") or "mean"] = \
            [m.value for m in history]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "strategy/gateon_context_per_task.json", tmp)
            out["context_per_task"] = json.loads(Path(path).read_text())["values"]
        except Exception:  # noqa: BLE001 - not a gateon run
            pass
    return out


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summary(name: str, c: dict) -> str:
    n = len(c["new_task"])
    edge = min(EDGE, n)
    line = (f"{name:26s} ACC {mean(c['R_last']):.3f}   new-task acc first {edge}: "
            f"{mean(c['new_task'][:edge]):.3f}  last {edge}: {mean(c['new_task'][-edge:]):.3f}")
    if "available" in c:
        line += f"   available at the end: {c['available']['mean'][-1]:.3f}"
    return line


def line_figure(name: str, xlabel: str, ylabel: str, title: str, lines: list[tuple[str, list[float], str]],
                first: int = 1, ylim: tuple[float, float] = (0, 1)) -> None:
    """One picture of curves over the task index: (label, values, line style) each."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, values, style in lines:
        ax.plot(range(first, len(values) + first), values, style, label=label, linewidth=1.2)
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=ylim, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMAGES / name)


def plot(results: dict, detect: dict) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    line_figure("gateon_mean_accuracy.png", "tasks trained", "mean accuracy over the tasks seen so far",
                "Permuted MNIST, 100 tasks", [(n, c["mean_seen"], "-") for n, c in results.items()])
    available = [(f"{n}: {layer}", values, "--" if "no re-activation" in n else "-")
                 for n, c in results.items() for layer, values in sorted(c.get("available", {}).items())
                 if layer != "mean"]
    line_figure("gateon_available_units.png", "tasks trained", "fraction of units available (A >= 0.05)",
                "Available units, with and without re-activation", available, ylim=(0, 1.02))
    line_figure("gateon_new_task_accuracy.png", "task index i", "accuracy on task i just after training it",
                "New-task accuracy R[i][i]", [(n, c["new_task"], "-") for n, c in results.items()], first=0)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    steps = detect.get("context_per_task", [[0.0]])
    image = ax.imshow(steps, aspect="auto", cmap="viridis", interpolation="nearest")
    m = detect["metrics"]
    ax.set(xlabel="detected context", ylabel="true task",
           title=(f"context=detect: recall {m.get('gateon/detect/recall', math.nan):.2f}, precision "
                  f"{m.get('gateon/detect/precision', math.nan):.2f}, delay "
                  f"{m.get('gateon/detect/delay_steps', math.nan):.0f} steps"))
    fig.colorbar(image, ax=ax, label="training steps")
    fig.tight_layout()
    fig.savefig(IMAGES / "gateon_detection.png")


def main(overrides: list[str]) -> None:
    results, detect = {}, {}
    with scratch_cwd():
        for name, extra in RUNS.items():
            cfg, outcome, _ = measured_run(CONFIG, [*extra, *overrides])
            results[name] = curves(outcome.tracking_uri, outcome.run_id)
            print(summary(name, results[name]), flush=True)
        cfg, outcome, _ = measured_run(CONFIG, [*DETECT, *overrides])
        detect = curves(outcome.tracking_uri, outcome.run_id)
        print(summary("gateon, context=detect", detect), flush=True)
    m = detect["metrics"]
    print(f"detection over {cfg.stream.n_tasks - 1} true switches: recall "
          f"{m.get('gateon/detect/recall', math.nan):.2f}, precision {m.get('gateon/detect/precision', math.nan):.2f}, "
          f"delay {m.get('gateon/detect/delay_steps', math.nan):.1f} steps; contexts opened "
          f"{m.get('gateon/contexts', math.nan):.0f}")
    plot(results, detect)
    raw = {"runs": results, "detect": detect, "overrides": overrides}
    (IMAGES / "gateon_results.json").write_text(json.dumps(raw, separators=(",", ":")) + "\n")
    print(f"pictures: {IMAGES}/gateon_*.png")


if __name__ == "__main__":
    main(sys.argv[1:])
