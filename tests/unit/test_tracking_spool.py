"""The tracker spools what an unreachable MLflow server cannot take and delivers it later."""

from __future__ import annotations

import json
import logging
import time

import requests
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from lifelong.platform.spool import unreachable
from lifelong.platform.tracking import MATRIX_ARTIFACT, Tracker, deliver_spool, read_matrix
from tests.conftest import free_port

INIT = [0.1, 0.1]
R = [[0.9, 0.1], [0.8, 0.95]]


def values(step: int) -> dict[str, float]:
    return {"train/loss": 1.0 / (step + 1), "train/task_loss": step * 0.25}


def new_run(url: str) -> str:
    client = MlflowClient(url)
    return client.create_run(client.create_experiment(f"spool-{time.time_ns()}")).info.run_id


def assert_all_there(url: str, run_id: str, steps: range) -> dict[str, list]:
    client = MlflowClient(url)
    history = {key: sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
               for key in values(0)}
    for key, points in history.items():
        assert [m.step for m in points] == list(steps), key  # each step once, none missing
        assert [m.value for m in points] == [values(s)[key] for s in steps], key
        assert [m.timestamp for m in points] == sorted(m.timestamp for m in points), key
    for j, acc in enumerate(R[-1]):
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, f"acc/task_{j}")][-1] == (1, acc)
    assert read_matrix(url, run_id)["R"] == R
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {
        "plots/accuracy_heatmap.png", "plots/accuracy_over_time.png", "plots/new_task_accuracy.png"}
    assert client.get_run(run_id).data.tags["phase"] == "down"
    return history


def test_a_server_stopped_and_restarted_mid_run_loses_no_metric(restartable_mlflow_server, tmp_path):
    server = restartable_mlflow_server
    run_id = new_run(server.url)
    tracker = Tracker(server.url, run_id, spool_dir=tmp_path / "spool" / run_id)
    for step in range(10):
        tracker.metrics(values(step), step=step, flush=True)
    tracker.task_end(R[:1], INIT, "demo")
    assert not tracker.spool.pending()

    server.stop()
    started = time.time()
    for step in range(10, 30):  # training goes on: every call returns at once, into the spool
        tracker.metrics(values(step), step=step, flush=True)
    tracker.task_end(R, INIT, "demo")
    tracker.tags({"phase": "down"})
    down_seconds = time.time() - started
    print(f"logging 20 steps + task_end + tags with the server down took {down_seconds:.2f} s")
    assert down_seconds < 30
    assert tracker.spool.pending() and list((tracker.spool.dir / "files").rglob("*.png"))

    server.start()
    for step in range(30, 40):
        tracker.metrics(values(step), step=step, flush=True)
    assert tracker.close()
    assert not tracker.spool.dir.exists()
    history = assert_all_there(server.url, run_id, range(40))
    # timestamps are those of logging time, not of delivery
    down = [m.timestamp for m in history["train/loss"] if 10 <= m.step < 30]
    assert started * 1000 - 1 <= min(down) and max(down) <= (started + down_seconds) * 1000 + 1


def test_the_spool_survives_close_with_the_server_down_and_is_delivered_later(restartable_mlflow_server,
                                                                              tmp_path, caplog):
    live = restartable_mlflow_server.url
    run_id = new_run(live)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    spool_root = tmp_path / "spool"
    tracker = Tracker(closed, run_id, spool_dir=spool_root / run_id)
    started = time.time()
    with caplog.at_level(logging.WARNING, logger="lifelong.platform.tracking"):
        for step in range(3):
            tracker.metrics(values(step), step=step, flush=True)
        tracker.task_end(R[:1], INIT, "demo")
        for step in range(3, 6):
            tracker.metrics(values(step), step=step, flush=True)
        tracker.task_end(R, INIT, "demo")
        tracker.tags({"phase": "down"})
        assert tracker.close() is False
    assert time.time() - started < 15
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "unreachable" in warnings[0]  # once when it went down
    assert str(tracker.spool.dir) in warnings[1] and "deliver_spool" in warnings[1]  # once at close

    # the format: one JSON record per line, in logging order, artifacts as files beside it
    records = [json.loads(line) for line in (tracker.spool.path).read_text().splitlines()]
    kinds = ["artifact" if "artifact" in r else "tags" if "tags" in r else "metrics" for r in records]
    assert kinds == ["metrics"] * 4 + ["artifact"] * 4 + ["metrics"] * 4 + ["artifact"] * 4 + ["tags"]
    first = records[0]["metrics"]
    assert [(k, v, s) for k, v, _, s in first] == [(k, v, 0) for k, v in values(0).items()]
    steps = [m[3] for r in records for m in r.get("metrics", []) if m[0] == "train/loss"]
    assert steps == list(range(6))
    assert [r["artifact"].rsplit("/", 1)[1] for r in records if "artifact" in r] == \
        [MATRIX_ARTIFACT, "accuracy_heatmap.png", "accuracy_over_time.png", "new_task_accuracy.png"] * 2
    assert all((tracker.spool.dir / r["artifact"]).is_file() for r in records if "artifact" in r)
    assert json.loads((tracker.spool.dir / records[-5]["artifact"]).read_text())["R"] == R

    # a crash mid-append leaves a torn last line: it alone is lost, the rest is delivered
    with open(tracker.spool.path, "ab") as f:
        f.write(b'{"metrics":[["train/loss",')
    assert deliver_spool(live, spool_root) is True
    assert not (spool_root / run_id).exists()
    assert_all_there(live, run_id, range(6))
    assert deliver_spool(live, spool_root) is True  # nothing left: a no-op


def test_outages_are_told_apart_from_refused_requests():
    assert unreachable(requests.ConnectionError("refused"))
    assert unreachable(MlflowException("API request failed with exception ..."))  # INTERNAL_ERROR
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as e:
            raise MlflowException("API request to http://x failed", error_code="BAD_REQUEST") from e
    except MlflowException as wrapped:
        assert unreachable(wrapped)
    assert not unreachable(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}))
    assert not unreachable(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}))
    assert not unreachable(ValueError("a bug"))


def test_a_record_the_store_refuses_is_set_aside_not_retried_forever(tmp_path):
    from mlflow.entities import Metric

    from lifelong.platform.spool import Spool

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    spool = Spool(tmp_path / "spool" / "no-such-run")
    spool.add_batch([Metric("a", 1.0, 1, 0)])
    assert deliver_spool(uri, tmp_path / "spool") is True  # nothing deliverable is left
    assert not spool.pending() and not spool.path.exists()
    assert json.loads((spool.dir / "rejected.jsonl").read_text()) == {"metrics": [["a", 1.0, 1, 0]]}
