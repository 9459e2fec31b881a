"""Strategies registered through the entry point group; tracking URIs made worker-safe."""

from __future__ import annotations


from lifelong.platform.config import build_config
from lifelong.platform.tracking import default_artifact_location, resolve_uri
from lifelong.strategies.registry import ENTRY_POINT_GROUP, available, resolve_strategy
from tests.unit.plugin_fixture import MyStrategy


def test_a_strategy_registered_by_entry_point_resolves_by_name(tmp_path, monkeypatch):
    dist = tmp_path / "my_cl_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-cl-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nrecorder = tests.unit.plugin_fixture:MyStrategy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_strategy("recorder") is MyStrategy
    assert available()["recorder"] is MyStrategy
    assert build_config({"strategy": {"name": "recorder"}}).strategy.name == "recorder"


def test_relative_sqlite_and_paths_become_absolute_and_servers_stay_as_they_are(tmp_path):
    assert resolve_uri("sqlite:///mlruns.db", tmp_path) == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert resolve_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert resolve_uri("runs", tmp_path) == (tmp_path / "runs").as_uri()
    assert resolve_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    assert default_artifact_location("sqlite:////x/mlruns.db", tmp_path) == (tmp_path / "mlartifacts").as_uri()
    assert default_artifact_location("http://127.0.0.1:5000", tmp_path) is None
