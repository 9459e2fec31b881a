"""Shared by the benchmark scripts: `lifelong run`s through the real path, in one process
and one working directory (Ray's workers keep the cwd Ray started in), metrics read back."""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lifelong.platform.config import RunConfig, load_config  # noqa: E402
from lifelong.platform.driver import RunOutcome, run  # noqa: E402


@contextmanager
def scratch_cwd() -> Iterator[None]:
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        try:
            yield
        finally:
            os.chdir(here)


def measured_run(config: str, overrides: list[str]) -> tuple[RunConfig, RunOutcome, dict[str, float]]:
    """One run of ``configs/<config>`` with overrides: its config, outcome and final metrics."""
    cfg = load_config(ROOT / "configs" / config, overrides)
    outcome = run(cfg, progress=False)
    return cfg, outcome, MlflowClient(outcome.tracking_uri).get_run(outcome.run_id).data.metrics
