"""The Triton kernels against the reference, run by Triton's interpreter on CPU tensors.

All cases run in one fresh process (``triton_interpret_worker.py``) with
``TRITON_INTERPRET=1``, so this session never imports triton in interpreter mode; each
case is reported here as its own test. Same tolerance as test_kernels.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.kernel_cases import TRITON_CASES

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="triton is a Linux-only dev dependency")


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("triton") / "results.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "tests.unit.triton_interpret_worker", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", ["span_chunks"] + [case.id for case in TRITON_CASES])
def test_triton_kernel_matches_the_reference(interpreted: dict[str, str], name: str) -> None:
    assert interpreted.get(name) == "ok", interpreted.get(name, "not run")
