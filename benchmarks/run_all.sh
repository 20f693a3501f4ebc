#!/usr/bin/env bash
# Runs the model-level benchmark suite and regenerates docs/benchmarks.md.
#
#   benchmarks/run_all.sh                  # full run: results/{vqvae,prior,sampling}_bench.json, tpu_compile.json
#   benchmarks/run_all.sh --quick          # tiny shapes (checks the scripts; results/*_quick.json)
#   DEADLINE=13:25 benchmarks/run_all.sh   # UTC: workloads that would not finish by then are skipped and marked
#   SKIP_TPU_COMPILE=1 benchmarks/run_all.sh  # keep an existing results/tpu_compile.json (compile-only, slow)
#   TPU_PYTHON=/path/to/python benchmarks/run_all.sh  # an interpreter with libtpu (default: $PYTHON)
#
# Run it on an otherwise idle machine: the timings are wall-clock medians. The malloc settings below keep large
# temporaries mapped between steps instead of page-faulting them in on every call (~17% faster steps measured
# on the 2-core CPU machine); harness.machine_info records them in every JSON file.
#
# Order: first every workload that has a target (all three scripts), then the extras (scaling, bf16, BAIR-size
# sampling) merged into the same files, so a deadline cuts extras rather than targets.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967295}"
QUICK=()
SUFFIX=""
if [[ "${1:-}" == "--quick" ]]; then QUICK=(--quick); SUFFIX="_quick"; fi
DL=()
if [[ -n "${DEADLINE:-}" ]]; then DL=(--deadline "$DEADLINE"); fi

stamp() { echo "== $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg) $*"; }
status=0
for script in vqvae_bench prior_bench sampling_bench; do
  stamp "$script targets"
  "$PY" "benchmarks/$script.py" --phase targets "${QUICK[@]}" "${DL[@]}" || status=1
done
# The BAIR-size prior's memory under XLA:CPU's other scheduler (which keeps fewer activations live at once).
stamp "prior_bench BAIR memory, other scheduler"
XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_enable_concurrency_optimized_scheduler=false" \
  "$PY" benchmarks/prior_bench.py --only bair_sparse_b1,bair_sparse_b1_remat --name "prior_bench_sched$SUFFIX" \
  "${QUICK[@]}" "${DL[@]}" || status=1
for script in vqvae_bench sampling_bench prior_bench; do
  stamp "$script extras"
  "$PY" "benchmarks/$script.py" --phase extras --merge "${QUICK[@]}" "${DL[@]}" || status=1
done
# Compile-only (never executes the big steps): timing-insensitive, so it may also run on a busy machine. Needs
# libtpu (the `tpu` extra); without it the suite is skipped and docs/benchmarks.md keeps the existing rows.
TPU_PY="${TPU_PYTHON:-$PY}"
if [[ -z "${SKIP_TPU_COMPILE:-}" ]]; then
  if "$TPU_PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("libtpu") is None)'; then
    stamp tpu_compile
    "$TPU_PY" benchmarks/tpu_compile.py "${QUICK[@]}" --python "$TPU_PY" || status=1
  else
    stamp "tpu_compile skipped: libtpu not importable by $TPU_PY (pip install -e '.[tpu]')"
  fi
fi
if [[ -n "$SUFFIX" ]]; then
  "$PY" benchmarks/report.py --suffix "$SUFFIX" --out /tmp/benchmarks_quick.md || status=1
else
  "$PY" benchmarks/report.py || status=1
fi
stamp "done (status $status)"
exit $status
