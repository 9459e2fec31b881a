#!/usr/bin/env bash
# README command 1: set up, then run the default experiment (EWC on Permuted MNIST)
# with embedded Ray and a local MLflow store (./mlruns.db). Extra args are overrides.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec "$root/.venv/bin/lifelong" run configs/permuted_mnist_ewc.yaml "$@"
