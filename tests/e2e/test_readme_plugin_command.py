"""The README's plugin command, typed as a user types it, from the repository root (a copy
of the files it needs): the example strategy loads by dotted path although avalanche-lib
installs a package named ``examples``, and ``--no-progress`` may sit before overrides."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.user_shell import lifelong, repository_copy

pytestmark = pytest.mark.slow


def test_the_readme_plugin_command_runs_from_the_repository_root(tmp_path):
    root = repository_copy(tmp_path, "configs", "strategy_examples")
    plugin = "strategy_examples.clip_strategy:ClipGrads"
    out = lifelong("run", "configs/split_digits_ewc.yaml", "--no-progress", f"strategy.name={plugin}",
                   "strategy.max_norm=0.5", "train.epochs=1", cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("split-digits")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "ClipGrads-split_digits-s0"
    assert run.data.tags["strategy"] == plugin and run.data.params["strategy.max_norm"] == "0.5"
    assert "train/clipped_params" in run.data.metrics  # the plugin's hook ran in the worker
    # where to look: the run page and the runs table, in the Model training view
    base = "http://127.0.0.1:5000/#/experiments/" + experiment.experiment_id
    assert "(start it with: lifelong ui)" in out.stdout
    assert f"{base}/runs/{run.info.run_id}/model-metrics?workflowType=machine_learning" in out.stdout
    assert f"{base}?workflowType=machine_learning" in out.stdout
