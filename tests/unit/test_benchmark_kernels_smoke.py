"""benchmarks/kernels.py runs end to end on tiny tensors: every baseline it times computes the
reference's update (the script checks that first and exits non-zero if one does not), and
it prints its table. No timing is asserted: ratios at this size mean nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_kernel_benchmark_quick_run_checks_its_baselines_and_prints_the_table():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/kernels.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "implementation" in out.stdout and "figure" in out.stdout
    assert "masked SGD+EWC, fused / eager" in out.stdout
