#!/usr/bin/env bash
# The GPU checks, as one short script for a machine with a CUDA device, torch and Triton
# (a few minutes; nothing is installed: lifelong.kernels and these checks need only
# torch, triton and pytest): the Triton kernels compiled and run on the GPU against the
# reference, then the kernel benchmark, whose GPU section measures Triton's fused Adam
# against HBM bandwidth and torch's Adam(fused=True). Reports go to ${OUT:-.}.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
python="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
# --noconftest: the suite's conftest needs the whole platform (omegaconf, Ray, ...)
"$python" -m pytest -q --noconftest -p no:cacheprovider tests/gpu 2>&1 | tee "$out/gpu_tests.txt"
"$python" benchmarks/kernels.py --rounds 5 2>&1 | tee "$out/gpu_benchmark.txt"
