"""TPU compile suite: each paper config's train step (and the BAIR prior's sampler) compiled for its TPU slice by
the real TPU compiler.

Nothing runs on a TPU (none is available here): `python -m experiments.compile` lowers the trainer's step with
abstract arguments over a mesh of a topology's compile-only devices and compiles it with libtpu (the `tpu` extra).
Each row gives, per chip: HBM (arguments + outputs - donated + temporaries + program) against the compiler's
usable HBM, fits or not (the compiler's own out-of-memory verdict), the compiler's flops and HBM bytes, the
roofline step `max(flops / peak, bytes / bandwidth)` and its compute-bound ceiling, and the compile time on this
host. Peaks are published specs. Rows run one at a time (libtpu admits one process), each in its own process.
Sampler rows (`--program=sample`) give HBM and the KV caches per chip instead of a roofline (the compiler counts
the decode loop's body once).

  python benchmarks/tpu_compile.py                         # every row -> results/tpu_compile.json
  python benchmarks/tpu_compile.py --only bair_prior_v5e8  # some rows, merged into the existing file
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

# This process's JAX (machine info) stays on CPU: the compile tool's process is the one that holds libtpu.
os.environ["JAX_PLATFORMS"] = "cpu"
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import harness  # noqa: E402

C = "experiments/configs/"
# The paper configs with their `tpu` argument (experiments/configs/common_config.py:tpu, docs/scaling.md): bf16
# compute over float32 parameters; a prior also rematerialises each block, scans the blocks and runs splash.
ROWS: dict[str, dict[str, Any]] = {
    "bair_vqvae_v5e8": dict(config=C + "vqvae_bair.py:tpu", topology="v5e:2x4", overrides=[], note="batch 32"),
    "bair_prior_v5e8": dict(config=C + "gpt_bair.py:tpu", topology="v5e:2x4", overrides=[], note="batch 32"),
    "bair_prior_sample_v5e8": dict(config=C + "gpt_bair.py:tpu", topology="v5e:2x4", overrides=[],
                                   args=["--program=sample"], note="KV-cached sampler, batch 32, bf16"),
    "bair_prior_sample_v5e8_f32": dict(config=C + "gpt_bair.py", topology="v5e:2x4", overrides=[],
                                       args=["--program=sample"], note="KV-cached sampler, batch 32, float32"),
    "ucf101_vqvae_v5e8": dict(config=C + "vqvae_ucf101.py:tpu", topology="v5e:2x4", overrides=[],
                              note="batch 32"),
    "ucf101_prior_cc_v5e8": dict(config=C + "gpt_ucf101.py:classcond,tpu", topology="v5e:2x4", overrides=[],
                                 note="class-conditional, batch 32"),
    # The smallest slice that holds each UCF-101 config with 10% headroom (a chip pair does not: 16 clips per chip).
    "ucf101_vqvae_v5e4": dict(config=C + "vqvae_ucf101.py:tpu", topology="v5e:2x2", overrides=[],
                              note="batch 32"),
    "ucf101_prior_cc_v5e4": dict(config=C + "gpt_ucf101.py:classcond,tpu", topology="v5e:2x2", overrides=[],
                                 note="class-conditional, batch 32"),
    # A pod: batch 32 over 256 chips needs the model axis (the batch divides by data x fsdp); two axes > 1 only
    # (docs/scaling.md: the XLA fault of meshes with all three).
    "ucf101_vqvae_v5e256": dict(config=C + "vqvae_ucf101.py:tpu", topology="v5e:16x16",
                                overrides=["--config.mesh=(32,1,8)"],
                                note="batch 32 over data=32, conv output channels over model=8"),
    "ucf101_prior_cc_v5e256": dict(config=C + "gpt_ucf101.py:classcond,tpu", topology="v5e:16x16",
                                   overrides=["--config.mesh=(32,1,8)"],
                                   note="class-conditional; batch 32 over data=32, heads and MLP over model=8"),
    # What a pod user would run instead: the batch scaled with the chips (the VQ-VAE at 8 clips per chip, as on
    # v5e-4; the prior at 4, as on v5e-8).
    "ucf101_vqvae_v5e256_b2048": dict(config=C + "vqvae_ucf101.py:tpu", topology="v5e:16x16",
                                      overrides=["--config.batch_size=2048", "--config.mesh=(256,1,1)"],
                                      note="batch 2048 (8 per chip) over data=256"),
    "ucf101_prior_cc_v5e256_b1024": dict(config=C + "gpt_ucf101.py:classcond,tpu", topology="v5e:16x16",
                                         overrides=["--config.batch_size=1024", "--config.mesh=(256,1,1)"],
                                         note="class-conditional; batch 1024 (4 per chip) over data=256"),
}
QUICK = {
    "vqvae_runlocal_v5e4": dict(config=C + "vqvae_bair.py:runlocal", topology="v5e:2x2", overrides=[],
                                note="runlocal"),
    "prior_runlocal_v5e4": dict(config=C + "gpt_bair.py:runlocal", topology="v5e:2x2", overrides=[],
                                note="runlocal"),
    "prior_sample_runlocal_v5e4": dict(config=C + "gpt_bair.py:runlocal", topology="v5e:2x2", overrides=[],
                                       args=["--program=sample", "--sample_batch=8"], note="runlocal sampler"),
}


def compile_row(name: str, row: dict[str, Any], python: str, timeout: float) -> dict[str, Any]:
  """Runs the compile tool for one row in its own process; its JSON report plus what was asked."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "report.json"
    extra = [*row.get("args", []), *row["overrides"]]
    cmd = [python, "-m", "experiments.compile", f"--config={row['config']}", f"--topology={row['topology']}",
           f"--json={out}", *extra]
    # libtpu from this interpreter's packages, or from a `pip install --target` directory (as CI installs it).
    path = [str(ROOT)] + [d for d in [os.environ.get("VIDEOGPT_LIBTPU_DIR", "")] if d]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(path)})
    wall = time.perf_counter() - t0
    if not out.exists():
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
      raise RuntimeError(f"{name}: the compile tool failed (exit {proc.returncode}): {tail[0]}")
    report = json.loads(out.read_text())
  print(f"--- {name}\n{proc.stdout.strip()}", flush=True)
  return {"name": name, **row, "command": " ".join(["python", *cmd[1:5], *extra]), "wall_s": wall, **report}


def _gib(n: float | None) -> str:
  return "–" if n is None else f"{n / 2**30:.2f} GiB"


def _ms(s: float | None) -> str:
  return "–" if s is None else f"{s * 1e3:.0f} ms" if s >= 0.01 else f"{s * 1e3:.1f} ms"


def _head(r: dict[str, Any]) -> str:
  mesh = "×".join(str(v) for v in (r.get("mesh") or {}).values())
  config = f"`{r['config'].rsplit('/', 1)[-1]}` {' '.join(o.replace('--config.', '') for o in r['overrides'])}"
  return (f"| {r['name']} | {config.strip()} | {r['chip']} ×{r['num_chips']}, {mesh} | {_gib(r['hbm_bytes'])} "
          f"({_gib(r['usable_hbm_bytes'])}) |")


def _is_sampler(r: dict[str, Any]) -> bool:
  return r.get("program") == "sample"


def table(data: dict[str, Any] | None) -> list[str]:
  """The markdown tables of `results/tpu_compile.json` for docs/benchmarks.md: train steps, then samplers."""
  if not data or not data.get("rows"):
    return ["Not measured: run `python benchmarks/tpu_compile.py` with libtpu installed (`pip install -e '.[tpu]'`)."]
  out = ["| row | config | slice, mesh (data, fsdp, model) | HBM per chip (usable) | verdict | TFLOP / chip | "
         "GB HBM traffic / chip | roofline step (compute) | ceiling | compile |",
         "|---|---|---|---|---|---|---|---|---|---|"]
  for r in data["rows"]:
    if _is_sampler(r):
      continue
    head = _head(r)
    if r["fits"]:
      flops = r["flops"] + r.get("kernel_flops", 0.0)
      out.append(f"{head} fits, {r['headroom']:.0%} headroom | {flops / 1e12:.2f} | "
                 f"{r['bytes_accessed'] / 1e9:.0f} | {_ms(r['roofline_s'])} ({_ms(r['compute_s'])}) | "
                 f"{r['ceiling']:.0%} | {r['compile_s']:.0f} s |")
    else:
      out.append(f"{head} **does not fit** (needs {_gib(r.get('required_bytes'))}) | – | – | – | – | "
                 f"{r['compile_s']:.0f} s |")
  samplers = [r for r in data["rows"] if _is_sampler(r)]
  if samplers:
    out += ["", "KV-cached samplers (`--program=sample`: the whole decode loop in one program, the batch split over "
            "`data` × `fsdp`):", "",
            "| row | config | slice, mesh (data, fsdp, model) | HBM per chip (usable) | verdict | KV caches / chip | "
            "positions | compile |", "|---|---|---|---|---|---|---|---|"]
    for r in samplers:
      verdict = (f"fits, {r['headroom']:.0%} headroom" if r["fits"]
                 else f"**does not fit** (needs {_gib(r.get('required_bytes'))})")
      out.append(f"{_head(r)} {verdict} | {_gib(r.get('kv_cache_bytes'))} | {r.get('tokens')} | "
                 f"{r['compile_s']:.0f} s |")
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="the runlocal configs on v5e:2x2 (checks the suite)")
  parser.add_argument("--only", default="", help="comma-separated row names")
  parser.add_argument("--name", default="", help="results file name (default tpu_compile[_quick])")
  parser.add_argument("--results_dir", default=str(harness.RESULTS_DIR))
  parser.add_argument("--python", default=sys.executable, help="interpreter with libtpu importable")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per row")
  args = parser.parse_args()
  rows = QUICK if args.quick else ROWS
  names = [n for n in args.only.split(",") if n] or list(rows)
  unknown = sorted(set(names) - set(rows))
  if unknown:
    raise SystemExit(f"unknown row(s) {unknown}; known: {sorted(rows)}")
  rec = harness.Recorder(args.name or ("tpu_compile_quick" if args.quick else "tpu_compile"), {
      "description": __doc__.split("\n\n")[1], "quick": args.quick}, merge=bool(args.only),
      results_dir=args.results_dir)
  for name in names:
    rec.add(compile_row(name, rows[name], args.python, args.timeout))


if __name__ == "__main__":
  main()
