"""An unusable tracking server stops `lifelong run` before any compute, in one line."""

from __future__ import annotations

from pathlib import Path

from lifelong.platform.cli import main
from tests.conftest import free_port

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "split_digits_ewc.yaml"


def test_unreachable_server_is_one_line_and_exit_4(capsys):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = main(["run", str(CONFIG), f"tracking.uri={closed}", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4
    assert len(err) == 1 and err[0].startswith(f"lifelong: error: tracking.uri={closed}: cannot create")
