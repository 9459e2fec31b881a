"""A local, append-only spool for tracking data the MLflow server could not take yet.

One directory per run (``.lifelong/spool/<run_id>/``)::

    spool.jsonl   one record per line, appended with a single write + fsync, so a crash
                  loses at most the line being written (a torn last line is skipped)
    delivered     byte offset into spool.jsonl up to which records reached the server
    files/        artifact files that spooled records refer to
    rejected.jsonl  records the server refused outright (a bad request, not an outage)

Records: ``{"metrics": [[key, value, timestamp_ms, step], ...], "tags": {k: v}}`` or
``{"artifact": "files/<id>/<name>", "path": <artifact dir or null>}``. Delivery is in
order; the offset moves past each record as soon as the server has it, so a crash or an
outage during delivery re-sends at most one batch (which the MLflow store de-duplicates).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import requests
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

TIMEOUT_S = 10  # per HTTP request of the tracker; a down server must not stall training
MAX_METRICS = 1000  # per log_batch request (MLflow's own limit)


@contextmanager
def http_limits(retries: int = 0, timeout: int = TIMEOUT_S) -> Iterator[None]:
    """Short MLflow HTTP retries/timeout for the calls inside (MLflow reads these env vars per
    request; its defaults, 7 retries with backoff and a 120 s timeout, block for minutes)."""
    values = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
              "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout),
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def unreachable(err: BaseException) -> bool:
    """True for an outage (connection refused/reset, timeout, 408/429/5xx), False for a
    request the server refused on its merits (4xx): that one would fail again."""
    seen: set[int] = set()
    e: Optional[BaseException] = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, requests.HTTPError) and e.response is not None:
            return e.response.status_code >= 500 or e.response.status_code in (408, 429)
        if isinstance(e, (requests.RequestException, ConnectionError, TimeoutError)):
            return True
        if isinstance(e, MlflowException) and e.get_http_status_code() >= 500:
            return True
        e = e.__cause__ or e.__context__
    return False


def brief(err: BaseException) -> str:
    return " ".join(str(err).split())[:240]


class Spool:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / "spool.jsonl"
        self.cursor_path = self.dir / "delivered"
        self._repair_torn_tail()

    # -- writing -----------------------------------------------------------------------------
    def add_batch(self, metrics: list[Metric], tags: Optional[dict[str, str]] = None) -> None:
        record: dict = {"metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics]}
        if tags:
            record["tags"] = tags
        self._append(record)

    def add_artifact(self, local_file: Path, artifact_path: Optional[str]) -> None:
        rel = Path("files") / uuid.uuid4().hex[:12] / Path(local_file).name
        target = self.dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_file, target.with_name(target.name + ".tmp"))
        os.replace(target.with_name(target.name + ".tmp"), target)
        self._append({"artifact": rel.as_posix(), "path": artifact_path})

    def _append(self, record: dict, path: Optional[Path] = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(path or self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _repair_torn_tail(self) -> None:
        """A crash mid-append leaves a line without its newline: end it, so it alone is lost."""
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:
                with open(self.path, "ab") as f:
                    f.write(b"\n")

    # -- reading and delivering -------------------------------------------------------------
    def _cursor(self) -> int:
        try:
            offset = int(self.cursor_path.read_text())
        except (OSError, ValueError):
            return 0
        return offset if offset <= self._size() else 0

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def pending(self) -> bool:
        return self._size() > self._cursor()

    def _mark(self, offset: int) -> None:
        tmp = self.cursor_path.with_name("delivered.tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.cursor_path)

    def _records(self) -> Iterator[tuple[int, Optional[dict]]]:
        """(offset after the record, record or None if unreadable), from the cursor on."""
        offset = self._cursor()
        with open(self.path, "rb") as f:
            f.seek(offset)
            for line in f:
                if not line.endswith(b"\n"):
                    return  # being written or torn: not a record yet
                offset += len(line)
                try:
                    yield offset, json.loads(line)
                except ValueError:
                    log.warning("skipping an unreadable line in %s", self.path)
                    yield offset, None

    def deliver(self, client: MlflowClient, run_id: str) -> None:
        """Send every pending record in order, merging runs of metric records into batches.
        Raises on an outage (what was delivered so far is marked); refused records go to
        rejected.jsonl. Removes the spool once everything is delivered."""
        if not self.pending():
            return self._clear()
        batch: list[Metric] = []
        batch_end = 0
        for end, record in self._records():
            if batch and (record is None or "metrics" not in record or "tags" in record
                          or len(batch) + len(record["metrics"]) > MAX_METRICS):
                self._send(client, run_id, {"metrics": batch}, batch_end)
                batch = []
            if record is not None and "metrics" in record and "tags" not in record:
                batch += [Metric(k, v, t, s) for k, v, t, s in record["metrics"]]
                batch_end = end
            elif record is not None:
                self._send(client, run_id, record, end)
            else:
                self._mark(end)
        if batch:
            self._send(client, run_id, {"metrics": batch}, batch_end)
        if not self.pending():
            self._clear()

    def _send(self, client: MlflowClient, run_id: str, record: dict, end: int) -> None:
        try:
            if "artifact" in record:
                client.log_artifact(run_id, str(self.dir / record["artifact"]), record["path"])
            else:
                metrics = [m if isinstance(m, Metric) else Metric(*m) for m in record["metrics"]]
                tags = [RunTag(k, v) for k, v in record.get("tags", {}).items()]
                client.log_batch(run_id, metrics=metrics, tags=tags, synchronous=True)
        except Exception as err:
            if unreachable(err):
                raise
            log.warning("MLflow refused a spooled record (%s); kept in %s", brief(err),
                        self.dir / "rejected.jsonl")
            if "metrics" in record:
                record = {**record, "metrics": [[m.key, m.value, m.timestamp, m.step] if
                                                isinstance(m, Metric) else m for m in record["metrics"]]}
            self._append(record, self.dir / "rejected.jsonl")
            self._mark(end)  # its artifact file stays, beside rejected.jsonl
            return
        self._mark(end)
        if "artifact" in record:
            shutil.rmtree(self.dir / Path(record["artifact"]).parent, ignore_errors=True)

    def _clear(self) -> None:
        """Everything delivered: the cursor goes first, so a crash here re-sends, never skips."""
        for p in (self.cursor_path, self.path):
            p.unlink(missing_ok=True)
        if not (self.dir / "rejected.jsonl").exists():
            shutil.rmtree(self.dir / "files", ignore_errors=True)
        if self.dir.exists() and not any(self.dir.iterdir()):
            self.dir.rmdir()
