"""A bad option, as a user types it: one line on stderr, exit 2, and nothing started or left
behind. Shared by the strategies' option tests: each passes its own arguments and checks
the line it gets back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lifelong.platform import cli, ray_session
from tests.e2e.user_shell import LIFELONG, ROOT, repository_copy, user_env

CONFIG = "configs/split_digits_ewc.yaml"


def fresh_process_lines(tmp_path: Path, runs: dict[str, list[str]]) -> dict[str, str]:
    """``lifelong run CONFIG *args`` for each named run, in fresh processes started together
    (each costs the interpreter's start-up), each in its own copy of the repository's
    configs. Each must exit 2 with one stderr line and leave nothing behind (no Ray
    session, no run log, no store); returns the lines by name."""
    procs = {}
    for name, args in runs.items():
        root = repository_copy(tmp_path / name, "configs")
        procs[name] = (root, subprocess.Popen([LIFELONG, "run", CONFIG, *args], cwd=root, env=user_env(),
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    lines = {}
    for name, (root, proc) in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, err)
        (lines[name],) = err.splitlines()
        assert out == ""
        assert sorted(p.name for p in root.iterdir()) == ["configs"], name  # no .lifelong, no mlruns.db
    return lines


def in_process_line(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                    tmp_path: Path) -> str:
    """``cli.main(["run", CONFIG, *args])`` with Ray's start made to fail: it must exit 2 with
    one stderr line before Ray would start, writing nothing; returns the line."""
    def no_ray() -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray_session, "connect", no_ray)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["run", str(ROOT / CONFIG), *args])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert list(tmp_path.iterdir()) == []
    return line
