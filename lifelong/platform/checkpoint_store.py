"""Where a run's task-boundary checkpoints live, and writing them off the critical path.

``<engine.storage_path>/lifelong-<run_id>/task-00003/state.pt`` holds the state after three
tasks. A directory appears under its final name only once its file is complete (written
in a hidden directory, then renamed), so ``latest()`` never returns half a checkpoint,
even if the writer was killed. The newest ``KEEP`` are kept.

Rank 0 writes in a background thread: the next task trains while the previous boundary's
state goes to disk. The guarantee is unchanged (a restart resumes from the newest
*complete* checkpoint) and ``close()`` waits for the last write before the run ends.
On a multi-node cluster ``storage_path`` must be a filesystem every node mounts.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from lifelong.platform import checkpoint
from lifelong.platform.background import SerialExecutor

KEEP = 2
PREFIX = "task-"


def run_directory(storage: str | Path, run_id: str) -> Path:
    return Path(storage) / f"lifelong-{run_id}"


class CheckpointStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._writer = SerialExecutor("lifelong-checkpoint")

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint file, or None."""
        done = sorted(p for p in self.directory.glob(f"{PREFIX}*") if (p / checkpoint.FILE).is_file())
        return done[-1] / checkpoint.FILE if done else None

    def save(self, state: dict[str, Any], background: bool = True) -> None:
        """Write ``state`` as the checkpoint after ``state['next_task']`` tasks. It must not be
        changed afterwards (``checkpoint.capture`` hands over copies). At most one write is
        in flight: the previous one finishes first."""
        self.wait()
        if background:
            self._writer.submit(self._write, state)
        else:
            self._write(state)

    def wait(self) -> None:
        """Block until the write in flight is on disk; re-raise its error here."""
        self._writer.wait()

    close = wait

    def _write(self, state: dict[str, Any]) -> None:
        name = f"{PREFIX}{int(state['next_task']):05d}"
        partial = self.directory / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        checkpoint.write(state, partial)
        final = self.directory / name
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in sorted(self.directory.glob(f"{PREFIX}*"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)

