"""Where to see a run: links into the MLflow UI, and ``lifelong ui`` to start it.

MLflow 3's UI opens an experiment in its GenAI view (traces, token usage), where a
lifelong run shows none of its charts; the runs table and the run page are in the
"Model training" view, which ``?workflowType=machine_learning`` selects. Every link we
print carries it, so a click lands on the charts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

from rich.console import Console

from lifelong.platform.config import TrackingConfig
from lifelong.platform.errors import ConfigError, TrackingError, first_line

HOST, PORT = "127.0.0.1", 5000
MODEL_TRAINING = "workflowType=machine_learning"
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Links:
    run: Optional[str]  # the run's page; None when there is no run yet
    runs: str  # the experiment's runs table


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_base(uri: str, host: str = HOST, port: int = PORT) -> str:
    """The UI's address: a tracking server serves it itself; a local store needs ``lifelong ui``."""
    return uri.rstrip("/") if is_server(uri) else f"http://{host}:{port}"


def experiment_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}?{MODEL_TRAINING}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The run's page, on its metric charts."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{MODEL_TRAINING}"


def ui_command(uri: str, cwd: Optional[Path] = None) -> str:
    """The command that shows this store: ``lifelong ui``, with ``--uri`` unless it is the
    default store of the directory the user is in."""
    cwd = cwd or Path.cwd()
    from lifelong.platform.tracking import resolve_uri

    if uri == resolve_uri(TrackingConfig.uri, cwd):
        return "lifelong ui"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and Path(uri[len(prefix):]).is_relative_to(cwd):
        uri = prefix + os.path.relpath(uri[len(prefix):], cwd)
    return f"lifelong ui --uri {uri}"


def links(uri: str, run_id: Optional[str] = None, host: str = HOST, port: int = PORT) -> Links:
    """Links for ``run_id`` (default: the newest run in the store) and its experiment."""
    from mlflow.tracking import MlflowClient

    from lifelong.platform.spool import http_limits

    client = MlflowClient(uri)
    try:
        with http_limits(retries=1):
            if run_id is None:
                experiments = [e.experiment_id for e in client.search_experiments()]
                newest = client.search_runs(experiments, order_by=["attributes.start_time DESC"],
                                            max_results=1) if experiments else []
                if not newest:
                    raise ConfigError(f"no runs in {uri} yet; start one with lifelong run CONFIG.yaml")
                run_id = newest[0].info.run_id
            experiment_id = client.get_run(run_id).info.experiment_id
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"cannot read run {run_id or '(newest)'} from {uri} ({first_line(err)[:160]})") from None
    base = ui_base(uri, host, port)
    return Links(run_url(base, experiment_id, run_id), experiment_url(base, experiment_id))


def print_where_to_look(console: Console, uri: str, run_id: str) -> None:
    """After a run: its page and its experiment's runs table, and how to start the UI."""
    try:
        found = links(uri, run_id)
    except ConfigError:  # the store is unreachable now: the run itself is fine
        console.print(f"See run {run_id} in the MLflow UI: {ui_command(uri)}", soft_wrap=True)
        return
    how = "" if is_server(uri) else f" (start it with: {ui_command(uri)})"
    console.print(f"In the MLflow UI{how}:", soft_wrap=True)
    _print_links(console, found)


def _print_links(console: Console, found: Links) -> None:
    if found.run:
        console.print(f"  this run:     {found.run}", soft_wrap=True, markup=False)
    console.print(f"  compare runs: {found.runs}", soft_wrap=True, markup=False)


def serve(uri: str, run_id: Optional[str], host: str, port: int, console: Console) -> int:
    """``lifelong ui``: the MLflow UI on a local store until Ctrl-C; for a tracking server,
    the links only (its own UI is already up)."""
    if is_server(uri):
        _print_links(console, links(uri, run_id))
        return 0
    store = _local_store(uri)
    found = links(uri, run_id, host, port)  # before starting: a store without runs says so
    log = tempfile.TemporaryFile(mode="w+")  # the server's own lines; shown only if it fails
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, text=True,
        # no job runner: a dozen huey processes, a slower start, and they outlive SIGTERM
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    # `kill` (SIGTERM) stops the server too, as Ctrl-C does: never leave it running alone
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        _wait_until_up(proc, log, f"http://{host}:{port}", port)
        console.print(f"MLflow UI on {store} at http://{host}:{port} (Ctrl-C stops it)", soft_wrap=True,
                      markup=False)
        _print_links(console, found)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(proc)
        log.close()


def _local_store(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix):])
        if not path.is_file():
            raise ConfigError(f"no MLflow store at {path}: run lifelong run CONFIG.yaml here first, "
                              f"or name the store with --uri")
        return str(path)
    return uri


def _wait_until_up(proc: subprocess.Popen, log: IO[str], base: str, port: int) -> None:
    deadline = time.time() + START_TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            return
        except OSError:
            if proc.poll() is not None:
                log.seek(0)
                lines = log.read().strip().splitlines() or ["it exited"]
                taken = any("address already in use" in line.lower() for line in lines)
                hint = f"port {port} is taken; choose another with --port" if taken else lines[-1][:200]
                raise TrackingError(f"the MLflow UI did not start ({hint})")
            if time.time() > deadline:
                raise TrackingError(f"the MLflow UI did not answer on {base} within {START_TIMEOUT_S:.0f}s")
            time.sleep(0.25)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
