"""Regenerates `docs/benchmarks.md` from `benchmarks/results/*.json` (nothing is measured here).

  python benchmarks/report.py            # reads results/{vqvae,prior,sampling}_bench.json, tpu_compile.json
  python benchmarks/report.py --suffix _quick --out /tmp/benchmarks_quick.md
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import gpu_bench, tpu_compile  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"
NOT_MEASURED = "not measured"
REFERENCE_MATMUL = 190e9  # float32 matmul rate of the reference machine (185-200 GFLOP/s)


def load(name: str) -> dict[str, Any] | None:
  path = RESULTS / f"{name}.json"
  return json.loads(path.read_text()) if path.exists() else None


def rows_by_name(data: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
  return {r["name"]: r for r in (data or {}).get("rows", [])}


def fmt_s(s: float | None) -> str:
  if s is None:
    return "–"
  return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_bytes(b: float | None) -> str:
  if b is None:
    return "–"
  return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def pct(x: float | None) -> str:
  return "–" if x is None else f"{x:.0%}"


def verdict(row: dict[str, Any] | None) -> str:
  if not row or "median_s" not in row and "meets_target" not in row:
    return f"**{NOT_MEASURED}**" + (f" ({row['skipped']})" if row and row.get("skipped") else "")
  return "met" if row.get("meets_target") else "**missed**"


def mem(row: dict[str, Any]) -> str:
  rss = row.get("rss_run_peak_bytes")
  extra = ""
  if row.get("rss_before_bytes") and rss:
    extra = f" (+{fmt_bytes(max(0, rss - row['rss_before_bytes']))} over what the process held before)"
  return f"RSS {fmt_bytes(rss)}{extra}; XLA temp {fmt_bytes(row.get('temp_bytes'))}"


def target_table(vq: dict, pr: dict, sa: dict) -> list[str]:
  out = ["| workload | original (PyTorch, 2 cores) | target | videogpt_jax float32 | speedup | verdict | "
         "compile | peak memory | MFU (XLA flops / step / measured matmul) | bf16 compute (beside) |",
         "|---|---|---|---|---|---|---|---|---|---|"]

  def line(label, orig, target, row, measured, bf16_row=None, bf16_measured=None):
    if row and "median_s" in row:
      sp = row.get("speedup_vs_reference", 0)
      mm = row.get("run_matmul_flops_per_s")
      scaled = f" (≈{sp * REFERENCE_MATMUL / mm:.2f}× at {REFERENCE_MATMUL / 1e9:.0f} GFLOP/s)" if mm else ""
      cells = [measured(row) + f" (load {row.get('load_average_1m', float('nan')):.1f})", f"{sp:.2f}×{scaled}",
               verdict(row),
               fmt_s(row.get("compile_s")), mem(row), pct(row.get("mfu_vs_measured_matmul"))]
    else:
      cells = ["–", "–", verdict(row), "–", "–", "–"]
    b = "–"
    if bf16_row and "median_s" in bf16_row:
      b = (f"{bf16_measured(bf16_row)} ({bf16_row.get('speedup_vs_reference', 0):.2f}×; load "
           f"{bf16_row.get('load_average_1m', float('nan')):.1f})")
    elif bf16_row:
      b = NOT_MEASURED
    out.append(f"| {label} | {orig} | {target} | " + " | ".join(cells) + f" | {b} |")

  step = lambda r: f"{fmt_s(r['median_s'])} ({r['clips_per_s']:.2f} clips/s)"  # noqa: E731
  clips = lambda r: f"{r['clips_per_s']:.1f} clips/s ({fmt_s(r['median_s'])})"  # noqa: E731
  toks = lambda r: f"{r['tokens_per_s']:,.0f} tokens/s ({fmt_s(r['median_s'])})"  # noqa: E731
  line("VQ-VAE train step, B=4, 16×64×64, h=128, 2 res, ds (4,4,4), 512×64", "0.92 s (4.4 clips/s)",
       "≥1.5× (≤0.61 s)", vq.get("train_b4"), step, vq.get("train_b4_bf16"), step)
  line("VQ-VAE encode, same model, B=4", "26.5 clips/s", "≥1.5× (≥39.8 clips/s)", vq.get("encode_b4"), clips,
       vq.get("encode_b4_bf16"), clips)
  line("VQ-VAE decode, same model, B=4", "24.5 clips/s", "≥1.5× (≥36.8 clips/s)", vq.get("decode_b4"), clips,
       vq.get("decode_b4_bf16"), clips)
  line("VQ-VAE train step, BAIR size (h=240, 4 res, ds (4,2,2), 1024×256), B=1", "4.3 s", "≥1.5× (≤2.87 s)",
       vq.get("train_bair_b1"), step)
  line("prior train step, 4 layers, hidden 192, 4 heads, full, 4×16×16, B=4", "2,100 tokens/s",
       "≥1.5× (≥3,150 tokens/s) and ≥40% of matmul peak", pr.get("train_full_b4"), toks,
       pr.get("train_full_b4_bf16"), toks)
  line("same prior + 1-frame conditioning (ResNet-34 + cross-attention, 64×64)", "1,030 tokens/s",
       "≥1.5× (≥1,545 tokens/s)", pr.get("train_framecond_b4"), toks, pr.get("train_framecond_b4_bf16"), toks)
  line("sampling all 1,024 tokens of that prior, B=4", "840 tokens/s (4.9 s)", "≥10× (≤0.49 s), flat per token",
       sa.get("sample_b4"), toks, sa.get("sample_b4_bf16"), toks)
  bair = pr.get("bair_sparse_b1")
  if bair and "median_s" in bair:
    xla = bair.get("xla_total_bytes", 0)
    out.append(f"| BAIR-size prior (8×32×32 = 8,192 tokens, sparse, 8 layers, hidden 576, 4 heads), train step "
               f"(fwd + bwd + Adam), B=1 | – | < 8 GB, no dense 8192² mask | {fmt_s(bair['median_s'])} "
               f"({bair['tokens_per_s']:,.0f} tokens/s) | – | {verdict(bair)} | {fmt_s(bair.get('compile_s'))} | "
               f"{mem(bair)}; XLA args+out+temp {fmt_bytes(xla)} | {pct(bair.get('mfu_vs_measured_matmul'))} | – |")
  else:
    out.append(f"| BAIR-size prior, 8,192 tokens, sparse, B=1 | – | < 8 GB | – | – | {verdict(bair)} |"
               " – | – | – | – |")
  return out


TARGETS = (  # (results, row, label, what is compared)
    ("vq", "train_b4", "VQ-VAE train step B=4", "speedup ≥1.5×"),
    ("vq", "encode_b4", "VQ-VAE encode B=4", "speedup ≥1.5×"),
    ("vq", "decode_b4", "VQ-VAE decode B=4", "speedup ≥1.5×"),
    ("vq", "train_bair_b1", "BAIR-size VQ-VAE train step B=1", "speedup ≥1.5×"),
    ("pr", "train_full_b4", "prior train step B=4", "speedup ≥1.5× and MFU ≥40%"),
    ("pr", "train_framecond_b4", "frame-conditional prior train step B=4", "speedup ≥1.5×"),
    ("sa", "sample_b4", "sampling 1,024 tokens B=4", "speedup ≥10×"),
    ("pr", "bair_sparse_b1", "BAIR-size prior 8,192 tokens B=1", "< 8 GB"),
)


def summary(tables: dict[str, dict]) -> list[str]:
  met, missed, unmeasured = [], [], []
  for src, name, label, what in TARGETS:
    row = tables[src].get(name)
    if not row or ("median_s" not in row):
      unmeasured.append(f"{label}" + (f" ({row['skipped']})" if row and row.get("skipped") else ""))
      continue
    got = []
    if "speedup_vs_reference" in row:
      got.append(f"{row['speedup_vs_reference']:.2f}×")
    if "mfu_target" in row:
      got.append(f"MFU {pct(row.get('mfu_vs_measured_matmul'))}")
    if "memory_target_bytes" in row:
      got.append(f"peak RSS {fmt_bytes(row.get('rss_run_peak_bytes'))}, XLA {fmt_bytes(row.get('xla_total_bytes'))}"
                 " with defaults")
      alt = tables.get("sched", {}).get("bair_sparse_b1_remat")
      if alt and alt.get("meets_target"):
        met.append(f"{label} with per-block remat and `--xla_cpu_enable_concurrency_optimized_scheduler=false`: "
                   f"peak RSS {fmt_bytes(alt.get('rss_run_peak_bytes'))}, XLA {fmt_bytes(alt.get('xla_total_bytes'))}"
                   f" ({fmt_s(alt.get('median_s'))} per step)")
    (met if row.get("meets_target") else missed).append(f"{label}: {', '.join(got)} (target {what})")
  out = [f"- Met ({len(met)}): " + ("; ".join(met) if met else "none")]
  out.append(f"- **Missed ({len(missed)})**: " + ("; ".join(missed) if missed else "none"))
  out.append(f"- **Not measured ({len(unmeasured)})**: " + ("; ".join(unmeasured) if unmeasured else "none"))
  return out


def frame_encoder_line(pr: dict) -> list[str]:
  fe, full, cond = pr.get("frame_encoder_b4"), pr.get("train_full_b4"), pr.get("train_framecond_b4")
  if not fe or "median_s" not in fe:
    return []
  parts = [f"Where the frame-conditional step's time goes: the frame encoder alone (ResNet-34, "
           f"{fe['params'] / 1e6:.1f} M "
           f"parameters, 1 frame 64×64, B=4), forward + backward, takes {fmt_s(fe['median_s'])} "
           f"(XLA {fe.get('flops', 0) / 1e9:.0f} GFLOP, MFU {pct(fe.get('mfu_vs_measured_matmul'))})"]
  if full and cond and "median_s" in full and "median_s" in cond:
    parts.append(f"; the unconditional step takes {fmt_s(full['median_s'])} and the conditional one "
                 f"{fmt_s(cond['median_s'])}")
  return ["".join(parts) + ".", ""]


def bair_memory(pr: dict, sched: dict) -> list[str]:
  out = []
  for src, rows, how in (("default XLA:CPU scheduler", pr, ""),
                         ("`--xla_cpu_enable_concurrency_optimized_scheduler=false`", sched, "")):
    for name, label in (("bair_sparse_b1", "no remat"), ("bair_sparse_b1_remat", "per-block remat")):
      r = rows.get(name)
      if not r:
        out.append(f"- {src}, {label}: {NOT_MEASURED}")
        continue
      xla = r.get("temp_bytes", 0) + r.get("argument_bytes", 0) + r.get("output_bytes", 0)
      t = f"{fmt_s(r['median_s'])} per step" if "median_s" in r else (r.get("skipped") or NOT_MEASURED)
      out.append(f"- {src}, {label}: XLA temp {fmt_bytes(r.get('temp_bytes'))} (args+out+temp {fmt_bytes(xla)}), "
                 f"peak RSS {fmt_bytes(r.get('rss_run_peak_bytes'))} "
                 f"(compile {fmt_bytes(r.get('rss_compile_peak_bytes'))}),"
                 f" {t}{how}")
  return out


def flatness(sa: dict) -> list[str]:
  out = []
  for name, label in (("window_b4", "target prior (1,024 tokens)"), ("bair_window_b4", "BAIR-size prior "
                                                                                       "(8,192 tokens, sparse)")):
    row = sa.get(name)
    if not row or not row.get("positions"):
      out.append(f"- {label}: {NOT_MEASURED}" + (f" ({row['skipped']})" if row and row.get("skipped") else ""))
      continue
    cells = ", ".join(f"from token {p['p0']}: {p['ms_per_token_step']:.2f} ms" for p in row["positions"]
                      if "ms_per_token_step" in p)
    out.append(f"- {label}, all 4 samples in one batch, {row['window']} decode steps under one scan: {cells} per "
               f"step (max/min {row.get('flatness_max_over_min', float('nan')):.2f}; a whole batch would take "
               f"≈{row.get('projected_full_sample_s', float('nan')):.2f} s).")
  row = sa.get("step_b4")
  if row and row.get("positions"):
    cells = ", ".join(f"position {p['pos']}: {p['median_s'] * 1e3:.2f} ms" for p in row["positions"]
                      if "median_s" in p)
    out.append(f"- One jitted `decode_step` per call (a dispatch per token), B=4: {cells}.")
  return out


def scaling(pr: dict, vq: dict) -> list[str]:
  out = ["Prior train step (4 layers, hidden 192, 4 heads, B=1, float32) vs sequence length, latents (T, 32, 32):",
         "", "| tokens | full | axial | sparse |", "|---|---|---|---|"]
  for t in (1, 2, 4, 8):
    cells = []
    for attn in ("full", "axial", "sparse"):
      r = pr.get(f"scale_{attn}_t{t}")
      if r and "median_s" in r:
        cells.append(f"{fmt_s(r['median_s'])}, {r['tokens_per_s']:,.0f} tok/s, temp {fmt_bytes(r.get('temp_bytes'))},"
                     f" MFU {pct(r.get('model_flops_utilisation_analytic'))}")
      else:
        cells.append(NOT_MEASURED + (f" ({r['skipped']})" if r and r.get("skipped") else ""))
    out.append(f"| {t * 1024:,} | " + " | ".join(cells) + " |")
  out += ["", "(MFU here is the analytic count — 6 × matmul parameters × tokens + attention scores — over the "
          "measured matmul rate, since XLA's cost analysis counts the chunked full-attention scan body once.)", "",
          "VQ-VAE train step (h=128, 2 res, ds (4,4,4), 16×64×64, float32) vs batch size:", "",
          "| batch | step | clips/s | compile | XLA temp | MFU |", "|---|---|---|---|---|---|"]
  for b, name in ((1, "train_b1"), (2, "train_b2"), (4, "train_b4"), (8, "train_b8")):
    r = vq.get(name)
    if r and "median_s" in r:
      out.append(f"| {b} | {fmt_s(r['median_s'])} | {r['clips_per_s']:.2f} | {fmt_s(r['compile_s'])} | "
                 f"{fmt_bytes(r.get('temp_bytes'))} | {pct(r.get('mfu_vs_measured_matmul'))} |")
    else:
      out.append(f"| {b} | {NOT_MEASURED} | | | | |")
  return out


def conditions(data: list[dict | None]) -> list[str]:
  """A warning when the runs saw a slower matmul than the reference machine's (a shared or throttled CPU)."""
  rates = [r["matmul_flops_per_s"] for d in data if d for r in d.get("runs", []) if r.get("matmul_flops_per_s")]
  loads = [r.get("load_average_1m") for d in data if d for r in d.get("rows", []) if r.get("load_average_1m")]
  if not rates or min(rates) > 0.85 * REFERENCE_MATMUL:
    return []
  ends = [r["matmul_flops_per_s"] for d in data if d for r in d.get("rows", []) if r.get("name") == "matmul_peak_end"]
  # The widest relative spread of repeats within one row: how far apart two timings of the same step can be.
  spread = max(((max(r["times_s"]) - min(r["times_s"])) / r["median_s"], r["name"], min(r["times_s"]),
                max(r["times_s"])) for d in data if d for r in d.get("rows", [])
               if len(r.get("times_s", [])) > 1 and r.get("median_s"))
  return [f"**Measurement conditions.** This machine measured a float32 matmul rate of {min(rates) / 1e9:.0f}–"
          f"{max(rates) / 1e9:.0f} GFLOP/s during these runs, against ≈185–200 GFLOP/s on the reference machine "
          f"(1-minute load average {min(loads):.1f}–{max(loads):.1f} while rows were recorded: other jobs shared "
          "the 2 cores). The verdicts use the measured times as they are. The “≈… at 190 GFLOP/s” figures "
          "rescale each speedup by 190 / (this run's matmul rate): an estimate of the speedup on an idle machine, "
          "valid for compute-bound steps only (not for sampling, which is bound by per-step overheads). Each "
          "cell gives the 1-minute load average when its row was recorded, and every row its run's matmul rate "
          "(in the JSON): rows from different runs saw different machines (the matmul rate re-measured at the "
          "end of runs: " + ", ".join(f"{e / 1e9:.0f}" for e in ends) + " GFLOP/s). Repeats of one step also "
          f"differ: by up to {spread[0]:.0%} of the median within a row ({spread[1]}: {fmt_s(spread[2])} to "
          f"{fmt_s(spread[3])}), so compare rows measured in the same run, and float32 with bf16 only with that in "
          "mind.", ""]


def machine(data: dict[str, dict | None]) -> list[str]:
  out = []
  for label, d in data.items():
    if not d:
      out.append(f"- `{label}`: {NOT_MEASURED}")
      continue
    m = d.get("machine", {})
    end = next((r["matmul_flops_per_s"] for r in d.get("rows", []) if r.get("name") == "matmul_peak_end"), None)
    load = d.get("load_average_start")
    runs = d.get("runs", [])
    if len(runs) > 1:  # results merged from several invocations: one line each
      out.append(f"- `{label}`: {len(runs)} runs, {m.get('cpu_count')} CPUs, jax {m.get('jax')}, GLIBC_TUNABLES "
                 f"{'set' if m.get('glibc_tunables') else 'unset'}" + (" — **quick run**" if d.get("quick") else ""))
      for r in runs:
        out.append(f"  - {r['date']}: float32 matmul {r.get('matmul_flops_per_s', 0) / 1e9:.0f} GFLOP/s, load "
                   f"average at start {r.get('load_average_start', [float('nan')])[0]:.2f}")
      continue
    out.append(f"- `{label}`: {m.get('date')}, {m.get('cpu_count')} CPUs, jax {m.get('jax')}, "
               f"float32 matmul {d.get('matmul_flops_per_s', 0) / 1e9:.0f} GFLOP/s at start"
               + (f", {end / 1e9:.0f} at end" if end else "")
               + (f", load average at start {load[0]:.2f}" if load else "")
               + f", GLIBC_TUNABLES {'set' if m.get('glibc_tunables') else 'unset'}"
               + (" — **quick run (tiny shapes), not a measurement**" if d.get("quick") else ""))
  return out


TRAINER_STEP = "videogpt_jax.train.steps"


def train_step_provenance(*tables) -> str:
  """What the train-step rows time: the trainers' own steps (rows that record `train_step`), or not (older rows)."""
  rows = [r for t in tables for r in (t or {}).values()
          if r.get("kind", "train") in ("train", "vqvae", "prior") and ("median_s" in r or "per_device_flops" in r)]
  other = [r["name"] for r in rows if r.get("train_step") != TRAINER_STEP]
  text = ("Train-step rows time the trainers' own steps, built by "
          f"`{TRAINER_STEP}` from the trainers' default config around each model: loss, gradient, global-norm "
          "clipping, Adam on the cosine schedule, the state's shardings and donation, one `jax.jit`.")
  if other:
    text += (f" Rows measured before the benchmarks used those steps ({len(other)} of {len(rows)}: "
             f"{', '.join(sorted(other)[:6])}{', ...' if len(other) > 6 else ''}) timed a re-implemented step "
             "(no clipping, schedule, shardings or donation) and are to be re-measured.")
  return text


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--suffix", default="", help="read results/<name><suffix>.json (e.g. _quick)")
  parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
  args = parser.parse_args()
  vq_data, pr_data, sa_data = (load(n + args.suffix) for n in ("vqvae_bench", "prior_bench", "sampling_bench"))
  tc = load("tpu_compile" + args.suffix)
  vq, pr, sa = rows_by_name(vq_data), rows_by_name(pr_data), rows_by_name(sa_data)
  lines = [
      "# Benchmarks",
      "",
      "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json` (written by "
      "`benchmarks/run_all.sh`); do not edit by hand. How to run and what each number means: "
      "`benchmarks/README.md`.",
      "",
      "The reference numbers are the original PyTorch VideoGPT on a machine of this kind (2 CPU cores, float32, "
      "torch with 2 threads, float32 matmul ≈185–200 GFLOP/s). Ours: median of ≥5 steps after warm-up, compile "
      "time separate, peak RSS per workload (kernel counter reset before each) and XLA's memory analysis; "
      "MFU = XLA cost-analysis flops / median step time / the float32 matmul rate (2048², jitted) measured in the "
      "same run.",
      "",
      train_step_provenance(vq, pr),
      "",
      "## Runs",
      "",
      *machine({"results/vqvae_bench.json": vq_data, "results/prior_bench.json": pr_data,
                "results/sampling_bench.json": sa_data}),
      "",
      "## Targets",
      "",
      *conditions([vq_data, pr_data, sa_data]),
      *summary({"vq": vq, "pr": pr, "sa": sa, "sched": rows_by_name(load("prior_bench_sched" + args.suffix))}),
      "",
      *target_table(vq, pr, sa),
      "",
      *frame_encoder_line(pr),
      "BAIR-size prior train step (8,192 tokens, sparse, 8 layers, hidden 576, B=1, float32) memory; the "
      "sparse pattern gathers each query block's allowed key blocks, so no 8192² mask or score matrix exists "
      "(a dense bool mask alone would be 64 MiB, dense float32 scores 256 MiB per head and layer):",
      "",
      *bair_memory(pr, rows_by_name(load("prior_bench_sched" + args.suffix))),
      "",
      "Per-token sampling cost vs position (KV caches; each step attends over the fixed-size cache with a mask, so "
      "the work per token does not grow with the position). `videogpt_jax.sample` on CPU decodes the samples in "
      "groups whose caches fit the processor's last-level cache (here 2 at a time: 6 MiB of cache per sample), "
      "which is what the sampling row of the target table measures; the window rows below decode all four "
      "together, where each step reads 25 MiB of cache:",
      "",
      *flatness(sa),
      "",
      "## Scaling",
      "",
      *scaling(pr, vq),
      "",
      "Attention alone (forward + backward of one layer, 1k–8k tokens, with the dense-mask baseline): "
      "`benchmarks/results/attention_scaling.json` (`benchmarks/attention_scaling.py`).",
      "",
      "## TPU slices (compiled by the TPU compiler, not run)",
      "",
      "Each paper config's train step (the trainer's own, with the config's `tpu` argument: bf16 compute; priors "
      "with per-block remat, blocks under `nn.scan`, splash attention) compiled for a TPU slice by libtpu's "
      "compiler on this host (`benchmarks/tpu_compile.py` → `python -m experiments.compile`; no TPU was available, "
      "none ran). HBM per chip = arguments + outputs − donated + temporaries + program, against the compiler's "
      "usable HBM; \"does not fit\" is the compiler's own out-of-memory verdict. Flops and bytes: the TPU "
      "compiler's cost analysis of one chip's program, with two corrections the tool states in its output: a "
      "scanned layer stack is a loop whose body the compiler counts once, so a prior's figures come from 1- and "
      "2-block compiles extrapolated to its depth; and the compiler does not see into Pallas kernels, so splash "
      "attention's flops are counted from the tiles it computes (partly masked tiles whole) and added. Roofline "
      "step = max(flops / peak, bytes / HBM bandwidth) with published peaks (v5e: 197 TFLOP/s bf16, 819 GB/s; v4: "
      "275 TFLOP/s, 1.2 TB/s); ceiling = compute time / roofline step. Inter-chip communication is not included "
      "(the step is a lower bound, the ceiling an upper bound). Compile time is wall-clock on this shared 2-core "
      "host. Which slice and mesh to use: `docs/scaling.md`.",
      "",
      *tpu_compile.table(tc),
      "",
      "## GPU (run, when a session had one)",
      "",
      "The paper configs' train steps (bf16; priors with remat and scanned blocks) at a per-GPU batch and the BAIR "
      "prior's sampler, run on one GPU by `bash benchmarks/gpu_bench.sh` (`benchmarks/gpu_bench.py`): median of 5 "
      "steps after a warm-up, compile separate, the GPU's peak memory.",
      "",
      *gpu_bench.table(load("gpu_bench" + args.suffix)),
      "",
  ]
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text("\n".join(lines))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
