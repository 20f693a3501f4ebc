#!/usr/bin/env bash
# Sets up .venv and runs the main job end to end on the embedded Moving MNIST data. Extra flags go to the job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Page-fault-friendlier malloc settings measured to speed up XLA:CPU steps (see docs/benchmarks.md).
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967295}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/python -m experiments.demo --workdir="${WORKDIR:-runs/demo}" "$@"
