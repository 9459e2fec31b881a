#!/usr/bin/env bash
# The GPU checks, as one short script for a machine with a CUDA device (about 2 minutes
# after the install): the Triton kernels compiled and run on the GPU against the
# reference, then the kernel benchmark, whose GPU section measures Triton's fused Adam
# against HBM bandwidth and torch's Adam(fused=True). Writes its output to ${OUT:-.}.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
python="${PYTHON:-python3}"
"$python" -m pip install --quiet -e ".[dev]"  # a CUDA machine takes the CUDA build of torch
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
"$python" -m pytest -q tests/gpu 2>&1 | tee "$out/gpu_tests.txt"
"$python" benchmarks/kernels.py --rounds 5 2>&1 | tee "$out/gpu_benchmark.txt"
