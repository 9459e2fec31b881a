"""Run a README command the way a user types it: the ``lifelong`` script of this
virtualenv, in a fresh process, with the user's environment only (no ``PYTHONPATH`` that
the test harness may have set for Ray workers, no ``RAY_ADDRESS``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIFELONG = str(Path(sys.executable).parent / "lifelong")
HARNESS_ONLY = ("PYTHONPATH", "RAY_ADDRESS")


def user_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in HARNESS_ONLY}


def lifelong(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([LIFELONG, *args], cwd=cwd, env=user_env(), capture_output=True,
                          text=True, timeout=timeout)


def repository_copy(into: Path, *names: str) -> Path:
    """The files of the repository root a command needs (``configs``, ``strategy_examples``),
    so it runs as from the root without writing runs into the checkout."""
    for name in names:
        shutil.copytree(ROOT / name, into / name, ignore=shutil.ignore_patterns("__pycache__"))
    return into
