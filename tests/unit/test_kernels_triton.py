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

from tests.unit.kernel_cases import TRITON_CASES, TRITON_MANY_CASES

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


@pytest.mark.parametrize("name", ["span_chunks"] + [case.id for case in (*TRITON_CASES, *TRITON_MANY_CASES)])
def test_triton_kernel_matches_the_reference(interpreted: dict[str, str], name: str) -> None:
    assert interpreted.get(name) == "ok", interpreted.get(name, "not run")


# (kernel, constexprs, pointer element types): a dense masked Adam, and SGD over aligned
# row spans with a soft scale and the pull.
POINTER_ARGS = {"P", "G", "B", "M", "V", "S", "C", "O", "starts", "stops"}
GPU_VARIANTS = {
    "adam_dense_uint8_mask": ("_adam_kernel", {"HAS_SPANS": False, "ALIGNED": False, "PULL": False,
                                               "DECAY": 2, "SCALE": 1},
                              {"P": "fp32", "G": "fp32", "M": "fp32", "V": "fp32", "S": "u8"}),
    "sgd_aligned_rows_float_scale_pull": (
        "_sgd_kernel", {"HAS_SPANS": True, "ALIGNED": True, "PULL": True, "DECAY": True, "MOM": True,
                        "SCALE": 2},
        {"P": "fp32", "G": "fp32", "B": "fp32", "S": "fp32", "C": "fp32", "O": "fp32",
         "starts": "i64", "stops": "i64"}),
}


@pytest.mark.parametrize("variant", list(GPU_VARIANTS))
def test_kernels_compile_for_a_gpu_with_vector_loads(variant: str) -> None:
    """Lowers a kernel to PTX and cubin for sm_90 with triton's bundled ptxas (no GPU needed):
    the interpreter never runs the real compiler. Loads must be vectorised, the math exact."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lifelong.kernels import triton_update

    name, constexprs, pointers = GPU_VARIANTS[variant]
    fn = getattr(triton_update, name)
    constexprs = {**constexprs, "BLOCK": triton_update.BLOCK}
    signature, fixed, aligned = {}, {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constexprs or arg in POINTER_ARGS and arg not in pointers:  # unused pointer: None
            signature[arg], fixed[(i,)] = "constexpr", constexprs.get(arg)
        elif arg in pointers or arg == "n":
            signature[arg] = "*" + pointers[arg] if arg in pointers else "i32"
            aligned[(i,)] = [["tt.divisibility", 16]]  # what triton assumes of n % 16 == 0
        else:
            signature[arg] = "fp32"
    compiled = triton_compile(ASTSource(fn, signature, constexprs=fixed, attrs=aligned),
                              target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})
    ptx = compiled.asm["ptx"]
    data_loads = [line for line in ptx.splitlines() if "ld.global" in line and "b64" not in line]
    scalar = [line for line in data_loads if ".v4." not in line and ".v2." not in line]  # v2: 8 mask bytes
    assert data_loads and not scalar, scalar
    assert "fma.rn.f32" not in ptx
    if name == "_adam_kernel":
        assert "div.rn.f32" in ptx and "sqrt.rn.f32" in ptx
