"""One background thread that runs jobs in the order they were submitted.

Task-boundary bookkeeping (MLflow writes, plot renders) used to stall training for seconds
per boundary. Handed to this thread, it overlaps the next task; order is kept, so metrics
and artifacts arrive exactly as if sent inline. A job's error is re-raised in the
submitting thread at the next ``submit`` or ``wait``, never lost.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Optional


class SerialExecutor:
    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: "queue.Queue[Optional[tuple[Callable[..., Any], tuple]]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise_pending()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put((fn, args))

    def wait(self) -> None:
        """Block until every submitted job has run; re-raise the first error."""
        if self._thread is not None:
            self._jobs.join()
        self._raise_pending()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is not None and self._error is None:  # after an error, drop the rest
                    fn, args = job
                    fn(*args)
            except BaseException as err:  # noqa: BLE001 - handed to the submitting thread
                self._error = err
            finally:
                self._jobs.task_done()

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err
