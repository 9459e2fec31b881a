"""Where a user lands in the MLflow UI: links in the Model training view, the command that
starts the UI, and run names that say what the run is."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lifelong.platform.config import build_config
from lifelong.platform.errors import ConfigError
from lifelong.platform.tracking import default_run_name, resolve_uri, start_run
from lifelong.platform.ui import experiment_url, links, run_url, ui_base, ui_command

LOCAL = "http://127.0.0.1:5000"


def test_links_open_the_model_training_view():
    assert experiment_url(LOCAL, "3") == f"{LOCAL}/#/experiments/3?workflowType=machine_learning"
    assert run_url(LOCAL, "3", "abc") == f"{LOCAL}/#/experiments/3/runs/abc/model-metrics?workflowType=machine_learning"


def test_a_server_serves_its_own_ui_and_a_local_store_needs_lifelong_ui():
    assert ui_base("http://mlflow:5000/") == "http://mlflow:5000"
    assert ui_base("https://mlflow.example.org") == "https://mlflow.example.org"
    assert ui_base("sqlite:////x/mlruns.db") == LOCAL
    assert ui_base("sqlite:////x/mlruns.db", host="0.0.0.0", port=8080) == "http://0.0.0.0:8080"


def test_the_ui_command_names_the_store_unless_it_is_this_directorys_default(tmp_path):
    assert ui_command(resolve_uri("sqlite:///mlruns.db", tmp_path), tmp_path) == "lifelong ui"
    assert (ui_command(resolve_uri("sqlite:///runs/other.db", tmp_path), tmp_path)
            == "lifelong ui --uri sqlite:///runs/other.db")
    assert ui_command("sqlite:////elsewhere/x.db", tmp_path) == "lifelong ui --uri sqlite:////elsewhere/x.db"


@pytest.mark.parametrize("strategy, stream, seed, name", [
    ({"name": "ewc"}, {"scenario": "permuted", "dataset": "mnist"}, 0, "ewc-permuted_mnist-s0"),
    ({"name": "replay"}, {"scenario": "split", "dataset": "fashion_mnist"}, 3, "replay-split_fashion_mnist-s3"),
    ({"name": "tests.unit.plugin_fixture:MyStrategy"}, {"scenario": "split", "dataset": "digits",
                                                       "n_tasks": 3}, 1, "MyStrategy-split_digits-s1"),
    ({"name": "tests.unit.plugin_fixture.MyStrategy"}, {"scenario": "split", "dataset": "digits",
                                                       "n_tasks": 3}, 1, "MyStrategy-split_digits-s1"),
])
def test_default_run_names_say_strategy_stream_and_seed(strategy, stream, seed, name):
    cfg = build_config({"strategy": strategy, "stream": stream, "seed": seed})
    assert default_run_name(cfg) == name


def test_runs_get_the_default_name_and_tracking_run_name_wins(tmp_path):
    uri = resolve_uri("sqlite:///mlruns.db", tmp_path)
    client = MlflowClient(uri)
    named = start_run(build_config({"strategy": {"name": "ewc"}}), uri, None)
    assert client.get_run(named).info.run_name == "ewc-permuted_mnist-s0"
    chosen = start_run(build_config({"tracking": {"run_name": "mine"}}), uri, None)
    assert client.get_run(chosen).info.run_name == "mine"

    found = links(uri)  # the newest run, and its experiment's runs table
    experiment = client.get_run(chosen).info.experiment_id
    assert found.run == run_url(LOCAL, experiment, chosen) and found.runs == experiment_url(LOCAL, experiment)
    assert links(uri, named).run == run_url(LOCAL, experiment, named)


def test_a_store_without_runs_says_so(tmp_path):
    with pytest.raises(ConfigError, match="no runs in .* yet"):
        links(resolve_uri("sqlite:///mlruns.db", Path(tmp_path)))
