"""Runs the Triton kernel cases under ``TRITON_INTERPRET=1`` on CPU tensors and writes
``{case id: "ok" or the failure}`` as JSON to the path in argv[1].

Started in a fresh process by ``test_kernels_triton.py``: the interpreter mode is read when
triton is imported, so it must never be switched on inside the test session itself.
"""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402

from lifelong.kernels import triton_update  # noqa: E402
from tests.unit import kernel_cases  # noqa: E402


def chunk_check() -> None:
    """Spans cut into chunks of at most one block, in order, never across a span's end."""
    spans = torch.tensor([[0, 3], [3, 4], [10, 10], [20, 2100], [2100, 2101]])
    chunks = triton_update.span_chunks(spans, n=2101, device=torch.device("cpu"), block=1024)
    assert chunks.starts.tolist() == [0, 3, 20, 1044, 2068, 2100], chunks.starts.tolist()
    assert chunks.stops.tolist() == [3, 4, 1044, 2068, 2100, 2101], chunks.stops.tolist()
    assert not chunks.aligned
    rows = torch.tensor([[0, 0], [32, 64], [2048, 4096]])
    chunks = triton_update.span_chunks(rows, n=5000, device=torch.device("cpu"), block=1024)
    assert chunks.starts.tolist() == [32, 2048, 3072] and chunks.aligned, chunks


def main(out_path: str) -> None:
    results = {}
    checks = [("span_chunks", chunk_check)] + [
        (case.id, lambda case=case: kernel_cases.check(
            case, triton_update.sgd_update, triton_update.adam_update)) for case in kernel_cases.TRITON_CASES]
    checks += [(case.id, lambda case=case: kernel_cases.check_many(
        case, triton_update.sgd_update_many, triton_update.adam_update_many))
        for case in kernel_cases.TRITON_MANY_CASES]
    for name, run in checks:
        try:
            run()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - each failure is reported by its own test
            results[name] = f"{type(exc).__name__}: {exc}"
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
