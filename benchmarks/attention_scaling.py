"""Forward+backward time and compiled memory of the prior's attention patterns vs sequence length.

For latent grids (T, 32, 32) with T = 1, 2, 4, 8 (1k to 8k tokens; BAIR's prior is 8x32x32), batch 1, 4 heads,
head dim 32, float32, causal, this times `jax.grad` of `sum(attend(q, k, v) ** 2)` w.r.t. q, k, v for
  - full:   `attend(attn_type="full")` (jax.nn.dot_product_attention up to FULL_CHUNK_THRESHOLD tokens, above it
            the query-chunked scan),
  - axial:  joint causal softmax over the T, H and W rows,
  - sparse: the original's strided block-sparse layout (block 32, 4 local blocks), gathered per query block,
and, as the quadratic baseline, `dense` = jax.nn.dot_product_attention at every length (only compiled, not run,
when its compiled temp memory exceeds --max_run_gib).

  python benchmarks/attention_scaling.py            # writes benchmarks/results/attention_scaling.json
  python benchmarks/attention_scaling.py --t 1,2 --repeats 3   # quick look
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import harness  # noqa: E402
from videogpt_jax.models import attention_patterns as ap  # noqa: E402
from videogpt_jax.models import sparse_layout  # noqa: E402


def computed_scores(attn_type: str, shape: tuple[int, ...]) -> int:
  """Query-key score entries each pattern computes per head (masked ones included): the work that scales."""
  length = int(np.prod(shape))
  if attn_type in ("full", "dense"):  # the chunked full path also scores the masked upper triangle
    return length * length
  if attn_type == "axial":
    return length * sum(shape)
  index, _ = sparse_layout.gather_table(shape, True, 32, 4)
  return length * index.shape[1] * 32


def make_step(attn_type: str, shape: tuple[int, ...]):
  def attention(q, k, v):
    if attn_type == "dense":
      return jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return ap.make(attn_type, shape).attend(q, k, v)

  def loss(q, k, v):
    return jnp.sum(attention(q, k, v).astype(jnp.float32) ** 2)

  return jax.grad(loss, argnums=(0, 1, 2))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--t", default="1,2,4,8", help="comma-separated T of the (T, 32, 32) grids")
  parser.add_argument("--types", default="full,axial,sparse,dense")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--max_run_gib", type=float, default=2.0, help="compile only above this temp memory")
  parser.add_argument("--name", default="attention_scaling", help="results/<name>.json")
  args = parser.parse_args()

  rows = []
  for t in (int(x) for x in args.t.split(",")):
    shape = (t, 32, 32)
    length = int(np.prod(shape))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(kk, (args.batch, length, args.heads, args.head_dim), jnp.float32) for kk in keys)
    for attn_type in args.types.split(","):
      compiled, compile_s, info = harness.compile_fn(make_step(attn_type, shape), q, k, v)
      scores = computed_scores(attn_type, shape)
      row = {"attn_type": attn_type, "shape": list(shape), "length": length, "compile_s": round(compile_s, 3),
             "scores_per_head": scores,
             # QK^T and PV, forward only; fwd+bwd (with the chunked path's recompute) is about 3-4x this
             "attn_matmul_gflop_fwd": 4 * args.batch * args.heads * args.head_dim * scores / 1e9, **info}
      if info.get("temp_bytes", 0) <= args.max_run_gib * 2**30:
        row.update(harness.time_steps(lambda: compiled(q, k, v), warmup=1, repeats=args.repeats))
      rows.append(row)
      ms = f"{row['median_s'] * 1e3:10.1f}" if "median_s" in row else "  (not run)"
      print(f"{attn_type:>7} L={length:5d} fwd+bwd {ms} ms   temp {info.get('temp_bytes', 0) / 2**20:9.1f} MiB   "
            f"{row['attn_matmul_gflop_fwd']:7.2f} GFLOP(fwd matmuls)   compile {compile_s:5.1f} s", flush=True)

  print("\nfwd+bwd median ms (temp MiB)")
  types = args.types.split(",")
  print(f"{'L':>6} " + " ".join(f"{t:>20}" for t in types))
  for length in sorted({r["length"] for r in rows}):
    cells = []
    for t in types:
      r = next(r for r in rows if r["length"] == length and r["attn_type"] == t)
      ms = f"{r['median_s'] * 1e3:.0f}" if "median_s" in r else "-"
      cells.append(f"{ms} ({r.get('temp_bytes', 0) / 2**20:.0f})")
    print(f"{length:6d} " + " ".join(f"{c:>20}" for c in cells))

  harness.write_results(args.name, {
      "description": "grad of sum(attend(q,k,v)**2) w.r.t. q,k,v; causal; float32; CPU timings are noisy when "
                     "the machine is shared (see load_average). 'flops' is XLA's cost analysis, which counts a "
                     "scan body once (under-reports the chunked full path); attn_matmul_gflop_fwd is analytic.",
      "config": {"batch": args.batch, "heads": args.heads, "head_dim": args.head_dim, "block": 32,
                 "num_local_blocks": 4, "full_chunk_threshold": ap.FULL_CHUNK_THRESHOLD,
                 "full_query_chunk": ap.FULL_QUERY_CHUNK, "repeats": args.repeats},
      "load_average": list(__import__("os").getloadavg()),
      "rows": rows,
  })


if __name__ == "__main__":
  main()
