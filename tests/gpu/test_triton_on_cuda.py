"""The Triton kernels compiled and run on a CUDA device, against the reference on the CPU:
the same cases that tests/unit/test_kernels_triton.py runs under Triton's interpreter.

Needs a GPU: ``bash scripts/gpu_check.sh`` runs this with the GPU benchmark on a machine
that has one. Without a CUDA device there is nothing to compile for, and the interpreter
tests cover the kernels' logic.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from tests.unit import kernel_cases

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def on_cuda(update: Callable[..., None]) -> Callable[..., None]:
    """``update`` with its tensors moved to the GPU and the results copied back, so the
    CPU-side case checker compares them with the reference. Spans stay on the CPU, where
    the engine's plans keep them."""

    def move(value: Any, key: str = "") -> Any:
        if torch.is_tensor(value):
            return value if key == "spans" else value.cuda()
        if isinstance(value, tuple):
            return tuple(move(v) for v in value)
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    def run(*args: Any, **kw: Any) -> None:
        moved = [move(a) for a in args]
        update(*moved, **{k: move(v, k) for k, v in kw.items()})
        torch.cuda.synchronize()
        for original, gpu in zip(args, moved):
            if torch.is_tensor(original) and gpu is not original:
                original.copy_(gpu.cpu())
    return run


@pytest.mark.parametrize("case", kernel_cases.TRITON_CASES, ids=lambda c: c.id)
def test_triton_kernel_on_cuda_matches_the_reference(case: kernel_cases.Case) -> None:
    from lifelong.kernels import triton_update

    kernel_cases.check(case, on_cuda(triton_update.sgd_update), on_cuda(triton_update.adam_update))


def test_select_picks_triton_on_cuda() -> None:
    from lifelong.kernels import select

    assert select(torch.device("cuda")).name == "triton"
