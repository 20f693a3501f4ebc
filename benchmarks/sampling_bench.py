"""Sampling benchmarks on this machine: all tokens of the prior with `videogpt_jax.sample`, and whether the
per-token cost stays flat in the position (KV caches: no token is recomputed).

Workloads:
  - `sample_b4`: `videogpt_jax.sample(gpt, variables, rng, 4)` for the 4-layer / hidden 192 / 4-head full-attention
    prior over 4x16x16 latents (1,024 tokens per clip), the reference workload (the original: 4.9 s, 840 tok/s).
    Its first call includes compilation (reported as `first_call_s`; `compile_s` = first call - median).
  - `window_b4`: the same decode step under one `lax.scan` for `--window` consecutive positions starting at
    p0 = 0, L/4, L/2, 3L/4, L - window (one compile: p0 is a traced argument); per-token time at each p0.
  - `step_b4`: a single jitted `GPT.decode_step` at positions 0, L/2, L-1 (includes one dispatch per token).
  - `sample_b4_bf16`: `sample_b4` with bf16 compute.
  - `bair_window_b4`: the window measurement for the BAIR-size prior (8 layers, hidden 576, sparse, 8x32x32),
    giving its per-token cost at the start, middle and end of its 8,192 tokens.

  python benchmarks/sampling_bench.py             # writes benchmarks/results/sampling_bench.json
  python benchmarks/sampling_bench.py --quick
"""
from __future__ import annotations

import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 2)[0])
import videogpt_jax  # noqa: E402
from benchmarks import harness  # noqa: E402
from benchmarks import prior_bench  # noqa: E402
from videogpt_jax.models.gpt import GPT  # noqa: E402

REFERENCE_S = 4.9  # the original, B=4, all 1,024 tokens (840 tokens/s)
SPEEDUP_TARGET = 10.0

WORKLOADS = {
    "sample_b4": dict(model=prior_bench.SMALL, batch=4, kind="sample", reference_s=REFERENCE_S,
                      speedup_target=SPEEDUP_TARGET),
    "window_b4": dict(model=prior_bench.SMALL, batch=4, kind="window"),
    "step_b4": dict(model=prior_bench.SMALL, batch=4, kind="step"),
    "sample_b4_bf16": dict(model=prior_bench.SMALL, batch=4, kind="sample", dtype="bfloat16",
                           reference_s=REFERENCE_S, speedup_target=SPEEDUP_TARGET, group="bf16"),
    "bair_window_b4": dict(model=prior_bench.BAIR, batch=4, kind="window", group="bair"),
}


def make_window(gpt: GPT, batch: int, window: int):
  """`run(variables, p0) -> codes (window, B)`: greedy decoding of positions p0 .. p0 + window - 1 under one scan,
  with zero KV caches standing in for the earlier tokens (the work per step does not depend on their values)."""
  def run(variables, p0):
    cond = gpt.apply(variables, {}, batch, method=GPT.prepare_decode)

    def body(carry, pos):
      cache, prev = carry
      logits, cache = gpt.apply(variables, prev, pos, cache, cond, method=GPT.decode_step)
      tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      return (cache, tok), tok

    carry = (gpt.init_cache(batch), jnp.zeros((batch,), jnp.int32))
    _, toks = jax.lax.scan(body, carry, p0 + jnp.arange(window, dtype=jnp.int32))
    return toks

  return run


def run_workload(name: str, spec: dict[str, Any], args, matmul: float, deadline: float | None) -> dict[str, Any]:
  model_kwargs = dict(spec["model"])
  if args.quick:
    model_kwargs = {**model_kwargs, **prior_bench.TINY}
  dtype = jnp.dtype(spec.get("dtype", "float32"))
  gpt, variables, _ = prior_bench.build(model_kwargs, 1, dtype)
  batch, length = spec["batch"], gpt.seq_len
  row: dict[str, Any] = {"name": name, **{k: v for k, v in spec.items() if k != "model"},
                         "model": {k: list(v) if isinstance(v, tuple) else v for k, v in model_kwargs.items()},
                         "attn_type": gpt.attn_type, "seq_len": length, "dtype": str(dtype)}
  if spec["kind"] == "sample":
    harness.reset_peak_rss()
    rng = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    harness.block(videogpt_jax.sample(gpt, variables, rng, batch))
    row["first_call_s"] = time.perf_counter() - t0
    row.update(harness.time_steps_until(lambda: videogpt_jax.sample(gpt, variables, rng, batch),
                                        warmup=args.warmup, repeats=args.repeats, deadline=deadline))
    row["rss_run_peak_bytes"] = harness.peak_rss_since_reset_bytes()
    if "median_s" in row:
      row["compile_s"] = row["first_call_s"] - row["median_s"]
      row["tokens_per_s"] = batch * length / row["median_s"]
      row["speedup_vs_reference"] = spec["reference_s"] / row["median_s"]
      row["meets_target"] = bool(row["speedup_vs_reference"] >= spec["speedup_target"]) and not args.quick
    return row

  if spec["kind"] == "window":
    window = min(args.window, length)
    starts = sorted({0, length // 4, length // 2, 3 * length // 4, length - window})
    fn = make_window(gpt, batch, window)
    harness.reset_peak_rss()
    compiled, compile_s, info = harness.compile_fn(fn, variables, jnp.int32(0))
    row.update({"compile_s": compile_s, **info})
    row["window"], row["positions"] = window, []
    for start in starts:
      if harness.seconds_left(deadline) < 10:
        row["positions"].append({"p0": start, "skipped": "deadline"})
        continue
      t = harness.time_steps_until(lambda s=start: compiled(variables, jnp.int32(s)), warmup=args.warmup,
                                   repeats=args.repeats, deadline=deadline)
      entry = {"p0": start, **t}
      if "median_s" in t:
        entry["ms_per_token_step"] = t["median_s"] / window * 1e3
      row["positions"].append(entry)
    per = [p["ms_per_token_step"] for p in row["positions"] if "ms_per_token_step" in p]
    if per:
      row["ms_per_token_step_min"], row["ms_per_token_step_max"] = min(per), max(per)
      row["flatness_max_over_min"] = max(per) / min(per)
      row["projected_full_sample_s"] = sum(per) / len(per) * length / 1e3
    row["rss_run_peak_bytes"] = harness.peak_rss_since_reset_bytes()
    return row

  # kind == "step": one dispatch per token, as a Python loop over `decode_step` would do.
  cond = gpt.apply(variables, {}, batch, method=GPT.prepare_decode)
  cache = gpt.init_cache(batch)
  prev = jnp.zeros((batch,), jnp.int32)
  step = jax.jit(lambda v, p, pos, c, cd: gpt.apply(v, p, pos, c, cd, method=GPT.decode_step))
  row["positions"] = []
  for pos in sorted({0, length // 2, length - 1}):
    t = harness.time_steps_until(lambda q=pos: step(variables, prev, jnp.int32(q), cache, cond)[0],
                                 warmup=max(args.warmup, 2), repeats=max(args.repeats, 20), deadline=deadline)
    row["positions"].append({"pos": pos, **t})
  return row


def report(name: str, row: dict[str, Any]) -> str | None:
  if "tokens_per_s" in row:
    return (f"{name:16s} L={row['seq_len']} {row['median_s']:.3f} s  {row['tokens_per_s']:.0f} tok/s  speedup "
            f"{row['speedup_vs_reference']:.1f}x  (first call {row['first_call_s']:.1f} s)")
  if "positions" in row:
    cells = [f"{p.get('p0', p.get('pos'))}: " + (f"{p['ms_per_token_step']:.2f} ms/step" if "ms_per_token_step"
                                                  in p else f"{p.get('median_s', float('nan')) * 1e3:.2f} ms")
             for p in row["positions"]]
    return f"{name:16s} L={row['seq_len']}  " + ", ".join(cells)
  return None


def main() -> None:
  parser = harness.suite_parser(__doc__, "tiny prior (a smoke test of the script)")
  parser.add_argument("--window", type=int, default=128, help="decode steps per window measurement")
  args = parser.parse_args()
  harness.run_suite(
      args, WORKLOADS, default_name="sampling_bench", run_workload=run_workload, report=report, matmul_at_end=False,
      description="Autoregressive sampling with per-layer KV caches (one lax.scan in one jit) on CPU.")


if __name__ == "__main__":
  main()
