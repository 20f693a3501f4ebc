#!/usr/bin/env bash
# The GPU benchmark (benchmarks/gpu_bench.py) on a machine with an NVIDIA GPU, then docs/benchmarks.md regenerated.
# Uses a Python whose JAX already sees the GPU ($PYTHON, else .venv's, else python3); failing that, installs the
# project with its `cuda` extra (jax[cuda12] at the pinned version) into .venv from the package registry.
# Extra arguments go to gpu_bench.py (e.g. --only bair_prior).
set -euo pipefail
cd "$(dirname "$0")/.."
has_gpu() { "$1" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; }
PY=""
for candidate in "${PYTHON:-}" .venv/bin/python python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null && has_gpu "$candidate"; then PY=$candidate; break; fi
done
if [ -z "$PY" ]; then
  echo "[gpu_bench] no Python here has a GPU-enabled JAX: installing the project's cuda extra into .venv"
  bash scripts/setup.sh
  .venv/bin/python -m pip install -q -c requirements-lock.txt -e '.[cuda]'
  PY=.venv/bin/python
  has_gpu "$PY" || { echo "ERROR: JAX sees no GPU even with jax[cuda13] installed (nvidia-smi?)" >&2; exit 1; }
fi
echo "[gpu_bench] $("$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())')"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" benchmarks/gpu_bench.py "$@"
"$PY" benchmarks/report.py || echo "[gpu_bench] results written; regenerate docs/benchmarks.md with report.py"
