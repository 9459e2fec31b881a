"""The run's log file: where Ray's, DeepSpeed's and MLflow's own lines go.

A default ``lifelong run`` shows lifelong's output only (header, progress, summary,
warnings, errors as one line). Everything else -- worker output that Ray forwards, Python
logging from any library, and, from the CLI, whatever the driver process itself writes to
file descriptor 2 (Ray's C++ core, MLflow's handler) -- goes to
``.lifelong/logs/RUN_ID.log``, which the driver logs to MLflow at the end. ``verbose`` shows
it all live as well.

Workers mark the lines meant for the console with ``CONSOLE_PREFIX``
(``worker.console_logging``); those still reach the terminal.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any, Optional

CONSOLE_PREFIX = "lifelong: "
LOG_DIR = Path(".lifelong/logs")
RAY_PRINTER = "ray_print_logs"  # the name of Ray's own worker-line handler in the driver
RUN_LOG = "lifelong_run_log"


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{CONSOLE_PREFIX}{record.levelname.lower()}: {record.getMessage()}"


def console_logging(stream: Optional[IO[str]] = None) -> logging.Handler:
    """Send the ``lifelong`` logger's warnings to the console as ``lifelong: warning: ...``
    (in a worker that is its stderr, which Ray forwards to the driver). Replaces the
    handler an earlier call installed."""
    logger = logging.getLogger("lifelong")
    for old in [h for h in logger.handlers if getattr(h, "lifelong_console", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter())
    handler.setLevel(logging.WARNING)
    handler.lifelong_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    return handler


class RunLog:
    """Capture third-party output for one run. ``start()`` before Ray and MLflow start;
    ``name(run_id)`` once the run has an id; ``stop()`` restores everything."""

    def __init__(self, verbose: bool = False, redirect_fd: bool = False,
                 run_id: Optional[str] = None, directory: Path = LOG_DIR) -> None:
        self.verbose, self.redirect_fd = verbose, redirect_fd
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / (f"{run_id}.log" if run_id else f"starting-{os.getpid()}.log")
        self.file: IO[str] = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
        self._saved_fd: Optional[int] = None
        self.console: IO[str] = sys.stderr
        self._handler = logging.StreamHandler(self.file)
        self._root_level = logging.getLogger().level
        self.stopped = False
        self._console_handler: Optional[logging.Handler] = None
        self._adopted: dict[str, tuple[list[logging.Handler], bool]] = {}

    def start(self) -> "RunLog":
        root = logging.getLogger()
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(self._handler)
        root.setLevel(min(self._root_level or logging.WARNING, logging.INFO))
        if self.redirect_fd and not self.verbose:
            sys.stderr.flush()
            self._saved_fd = os.dup(2)
            self.console = io.TextIOWrapper(os.fdopen(os.dup(self._saved_fd), "wb", buffering=0),
                                            write_through=True)
            os.dup2(self.file.fileno(), 2)
        self._console_handler = console_logging(self.console)
        import ray  # noqa: F401 - its logger exists once imported (a fraction of a second)

        self.adopt("ray")
        return self

    def adopt(self, name: str) -> None:
        """Send a library logger that writes to stderr itself (Ray's, MLflow's) to the file;
        call once the library is imported."""
        logger = logging.getLogger(name)
        if name in self._adopted:
            return
        self._adopted[name] = (list(logger.handlers), logger.propagate)
        logger.handlers = (list(logger.handlers) if self.verbose else []) + [self._handler]
        logger.propagate = False

    def name(self, run_id: str) -> Path:
        """Rename the log after the run (a new run's id is known only once MLflow made it)."""
        target = self.directory / f"{run_id}.log"
        if self.path != target:
            os.replace(self.path, target)  # open handles follow the file
            self.path = target
        return self.path

    def worker_lines(self, data: dict[str, Any]) -> None:
        """Ray's worker output in the driver: all to the file, ours also to the console."""
        who = data.get("actor_name") or data.get("task_name") or "worker"
        prefix = f"({who} pid={data.get('pid')}) "
        for line in data.get("lines", []):
            self.file.write(prefix + line + "\n")
            if not self.verbose and not self.stopped and line.startswith(CONSOLE_PREFIX):
                self.console.write(line + "\n")

    def capture_ray(self) -> None:
        """Route Ray's forwarded worker lines through ``worker_lines`` (call after ray.init).
        Lines arrive a moment late, so this stays in place after ``stop()``: whatever a
        finished run's workers still print goes to its file, not over the summary, until
        the next run in this process takes over."""
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        replaced = (() if self.verbose else (RAY_PRINTER,)) + (RUN_LOG,)
        with dispatcher._lock:
            dispatcher.handlers = [p for p in dispatcher.handlers if p[0] not in replaced]
            dispatcher.handlers.append((RUN_LOG, self.worker_lines))

    def stop(self) -> None:
        self.stopped = True
        for name, (handlers, propagate) in self._adopted.items():
            logging.getLogger(name).handlers, logging.getLogger(name).propagate = handlers, propagate
        self._adopted.clear()
        root = logging.getLogger()
        root.removeHandler(self._handler)
        if self._console_handler is not None:
            logging.getLogger("lifelong").removeHandler(self._console_handler)
        root.setLevel(self._root_level)
        if self._saved_fd is not None:
            sys.stderr.flush()
            os.dup2(self._saved_fd, 2)
            os.close(self._saved_fd)
            self._saved_fd = None
        self.file.flush()
