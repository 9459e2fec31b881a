"""Where does `lifelong run` spend its time before the first optimizer step?

Runs a tiny experiment (split digits, one epoch) through the real path twice in one
process -- a cold start (Ray not running) and a warm one (Ray up, as inside a
cluster job) -- and prints the phase boundaries the run recorded in MLflow.

    .venv/bin/python benchmarks/startup.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lifelong.platform.config import load_config  # noqa: E402
from lifelong.platform.driver import run  # noqa: E402

PHASES = [("ray_ready", "Ray started / connected"), ("worker_started", "Ray Train worker running"),
          ("learner_built", "data + model + DeepSpeed engine"), ("startup", "first optimizer step")]


def one(workdir: str) -> dict[str, float]:
    cfg = load_config(ROOT / "configs/split_digits_ewc.yaml", ["train.epochs=1"])
    here = os.getcwd()
    os.chdir(workdir)  # the same for both runs: Ray's workers keep the cwd Ray started in
    try:
        outcome = run(cfg, progress=False)
        metrics = MlflowClient(outcome.tracking_uri).get_run(outcome.run_id).data.metrics
    finally:
        os.chdir(here)
    return {k: metrics[f"time/{k}_seconds"] for k, _ in PHASES + [("total", "")]}


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        cold, warm = one(workdir), one(workdir)
    print(f"\n{'seconds since `lifelong run` began':40s}{'cold':>8s}{'warm':>8s}")
    for key, label in PHASES:
        print(f"{label:40s}{cold[key]:8.1f}{warm[key]:8.1f}")
    print(f"{'whole run (tiny experiment)':40s}{cold['total']:8.1f}{warm['total']:8.1f}")
    print(f"warm/cold start-up ratio: {warm['startup'] / cold['startup']:.2f}")


if __name__ == "__main__":
    main()
