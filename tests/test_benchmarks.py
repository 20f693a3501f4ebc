"""The benchmark suites run end to end on tiny shapes (`--quick`) and write well-formed result rows.

Speed is never asserted here: these check that the scripts, the shared harness and the result format work.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(script: str, only: str, tmp_path: pathlib.Path) -> dict:
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--only", only,
                         "--warmup", "1", "--repeats", "2", "--name", "out", "--results_dir", str(tmp_path)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "measured float32 matmul" in proc.stdout
  return json.loads((tmp_path / "out.json").read_text())


@pytest.mark.parametrize("script,only,key", [
    ("vqvae_bench.py", "train_b4", "clips_per_s"),
    ("prior_bench.py", "train_full_b4", "tokens_per_s"),
    ("sampling_bench.py", "sample_b4", "tokens_per_s"),
])
def test_quick_suite_writes_rows(script, only, key, tmp_path):
  result = _run(script, only, tmp_path)
  assert result["quick"] is True and result["matmul_flops_per_s"] > 0
  rows = {r["name"]: r for r in result["rows"]}
  row = rows[only]
  assert "skipped" not in row, row.get("skipped")
  assert row["median_s"] > 0 and row[key] > 0
  # --quick rows never claim a target.
  assert row.get("meets_target") in (None, False)


def test_unknown_workload_is_refused(tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prior_bench.py"), "--quick", "--only", "nope",
                         "--results_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "unknown workload(s) ['nope']" in proc.stderr
  assert not (tmp_path / "prior_bench_quick.json").exists()


@pytest.mark.slow  # ~55 s: three runlocal programs built and timed; run with VIDEOGPT_TESTS=all before lending a GPU
def test_gpu_suite_runs_the_trainers_steps_and_the_sampler(tmp_path):
  """`gpu_bench.py --quick`: the runlocal configs' train steps and sampler on this backend (CPU here), and the
  table docs/benchmarks.md shows: measured rows of a real run, "not measured" for a quick run or none."""
  result = _run("gpu_bench.py", "bair_vqvae,bair_prior,bair_prior_sample", tmp_path)
  rows = {r["name"]: r for r in result["rows"]}
  assert set(rows) == {"bair_vqvae", "bair_prior", "bair_prior_sample"}
  for row in rows.values():
    assert "skipped" not in row, row.get("skipped")
    assert row["median_s"] > 0 and row["batch"] == 2
  assert rows["bair_vqvae"]["clips_per_s"] > 0 and rows["bair_prior"]["tokens_per_s"] > 0
  assert rows["bair_prior_sample"]["tokens"] > 0 and rows["bair_prior_sample"]["tokens_per_s"] > 0
  sys.path.insert(0, str(ROOT))
  from benchmarks import gpu_bench  # pylint: disable=import-outside-toplevel
  assert gpu_bench.table(result)[0].startswith("Not measured")  # a quick run is no measurement
  assert gpu_bench.table(None)[0].startswith("Not measured")
  lines = gpu_bench.table({**result, "quick": False})
  assert len(lines) == 5 and lines[2].startswith("| bair_vqvae | `vqvae_bair.py` compute_dtype=bfloat16 | cpu |")
