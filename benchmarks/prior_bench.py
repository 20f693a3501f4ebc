"""GPT prior benchmarks on this machine: train step (unconditional and 1-frame conditional), the BAIR-size sparse
prior at 8,192 tokens, step time vs sequence length for full / axial / sparse attention, and bf16 compute.

Each workload is compiled ahead of time (compile time reported separately), run for warm-up + >= 5 timed steps
(median reported); memory is the process's peak RSS (reset per workload) and XLA's memory analysis. The
machine's float32 matmul rate (2048^2, jitted) is measured in the same run; model-FLOPs utilisation is XLA's
cost-analysis flops / step time / that rate. XLA counts a loop body once, so for full attention above
`attention_patterns.FULL_CHUNK_THRESHOLD` tokens (a scan over query chunks) its flops are an undercount; rows
also carry an analytic count (`model_flops`: 6 x matmul parameters x tokens + attention scores).

The train step is the prior trainer's own (`videogpt_jax.train.steps.gpt_program` for the trainer's default
config around each model): cross-entropy over all tokens, dropout on, global-norm clipping, Adam on the cosine
schedule, the state's shardings and donation, one `jax.jit`.

  python benchmarks/prior_bench.py                # writes benchmarks/results/prior_bench.json
  python benchmarks/prior_bench.py --quick        # tiny shapes: checks the script, not the speed
  python benchmarks/prior_bench.py --only train_full_b4 --deadline 13:25
"""
from __future__ import annotations

import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import harness  # noqa: E402
from videogpt_jax import sharding  # noqa: E402
from videogpt_jax.models import attention_patterns  # noqa: E402
from videogpt_jax.models import conditioning  # noqa: E402
from videogpt_jax.models import gpt as gpt_lib  # noqa: E402
from videogpt_jax.models import sparse_layout  # noqa: E402
from videogpt_jax.train import steps  # noqa: E402

# The reference prior (original PyTorch VideoGPT, 2 cores, float32): over the small VQ-VAE's 4x16x16 latents.
SMALL = dict(shape=(4, 16, 16), n_codes=512, embedding_dim=64, hidden_dim=192, heads=4, layers=4)
BAIR = dict(shape=(8, 32, 32), n_codes=1024, embedding_dim=256, hidden_dim=576, heads=4, layers=8,
            attn_type="sparse")
TINY = dict(shape=(2, 8, 8), n_codes=32, embedding_dim=16, hidden_dim=48, heads=4, layers=2)


def _workloads() -> dict[str, dict[str, Any]]:
  w: dict[str, dict[str, Any]] = {
      "train_full_b4": dict(model=SMALL, batch=4, reference_tokens_per_s=2100, speedup_target=1.5,
                            mfu_target=0.4),
      "train_framecond_b4": dict(model={**SMALL, "n_cond_frames": 1, "frame_shape": (64, 64)}, batch=4,
                                 reference_tokens_per_s=1030, speedup_target=1.5),
      "bair_sparse_b1": dict(model=BAIR, batch=1, memory_target_bytes=8 * 2**30),
  }
  for attn in ("full", "axial", "sparse"):
    for t in (1, 2, 4):
      w[f"scale_{attn}_t{t}"] = dict(model={**SMALL, "shape": (t, 32, 32), "attn_type": attn}, batch=1,
                                     group="seq_scaling")
  for attn in ("axial", "sparse", "full"):
    w[f"scale_{attn}_t8"] = dict(model={**SMALL, "shape": (8, 32, 32), "attn_type": attn}, batch=1,
                                 group="seq_scaling")
  # Memory of the BAIR-size step with per-block rematerialisation (and, run in a separate process with
  # XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false by run_all.sh, with XLA:CPU's other scheduler).
  w["bair_sparse_b1_remat"] = dict(model=BAIR, batch=1, remat=True, memory_target_bytes=8 * 2**30,
                                   group="bair_memory")
  w["train_full_b4_bf16"] = dict(model=SMALL, batch=4, dtype="bfloat16", reference_tokens_per_s=2100,
                                 speedup_target=1.5, group="bf16")
  w["train_framecond_b4_bf16"] = dict(model={**SMALL, "n_cond_frames": 1, "frame_shape": (64, 64)}, batch=4,
                                      dtype="bfloat16", reference_tokens_per_s=1030, speedup_target=1.5,
                                      group="bf16")
  # Diagnostic: the frame encoder (ResNet-34, 1 frame 64x64) alone, forward + backward w.r.t. its parameters.
  w["frame_encoder_b4"] = dict(model={**SMALL, "n_cond_frames": 1, "frame_shape": (64, 64)}, batch=4,
                               kind="frame_encoder", group="diagnostics")
  w["bair_sparse_b1_remat"] = w.pop("bair_sparse_b1_remat")
  w["scale_full_t8"] = w.pop("scale_full_t8")  # the slowest row (~minutes): last, so a deadline cuts it first
  return w


WORKLOADS = _workloads()


def keys_per_query(shape: tuple[int, ...], attn_type: str) -> float:
  """Mean number of keys each query scores in the implementation: causal full attention scores, per query block,
  the keys up to the block's end (above `FULL_CHUNK_THRESHOLD` tokens every chunk scores all keys, masked)."""
  length = int(np.prod(shape))
  if attn_type == "full":
    if length > attention_patterns.FULL_CHUNK_THRESHOLD:
      return float(length)
    block = min(attention_patterns.FULL_QUERY_BLOCK, length)
    ends = np.minimum(np.arange(block, length + block, block), length)
    sizes = np.diff(np.concatenate([[0], ends]))
    return float((sizes * ends).sum() / length)
  if attn_type == "axial":
    return float(sum(shape))
  index, _ = sparse_layout.gather_table(shape, True, 32, 4)
  return float(index.shape[1] * 32)


def model_flops(model: gpt_lib.GPT, batch: int, train: bool = True) -> float:
  """Analytic matmul flops of a forward (x3 for forward + backward): dense layers + attention scores."""
  c, length, layers = model.hidden_dim, model.seq_len, model.layers
  per_token = 2 * (model.embedding_dim * c + layers * 12 * c * c + c * model.n_codes)
  attn = layers * 4 * c * keys_per_query(tuple(model.shape), model.attn_type)
  fwd = batch * length * (per_token + attn)
  return 3 * fwd if train else fwd


def build(model_kwargs: dict[str, Any], batch: int, dtype: Any = jnp.float32, remat: bool = False):
  """`(model, variables, inputs)` with `inputs = (codes, cond_frames or None)`, random."""
  kwargs = dict(model_kwargs)
  kwargs["shape"] = tuple(kwargs["shape"])
  if kwargs.get("frame_shape") is not None:
    kwargs["frame_shape"] = tuple(kwargs["frame_shape"])
  model = gpt_lib.GPT(**kwargs, dtype=dtype, remat=remat)
  codes = jax.random.randint(jax.random.PRNGKey(1), (batch, *model.shape), 0, model.n_codes, jnp.int32)
  cond = None
  if model.n_cond_frames:
    cond = jax.random.uniform(jax.random.PRNGKey(2), (batch, model.n_cond_frames, *model.frame_shape, 3),
                              jnp.float32, -0.5, 0.5)
  variables = jax.jit(lambda r, c, f: model.init({"params": r}, c, f, deterministic=True))(
      jax.random.PRNGKey(0), codes[:1], None if cond is None else cond[:1])
  return model, variables, (codes, cond)


def train_program(model_kwargs: dict[str, Any], batch: int, dtype: Any = jnp.float32, remat: bool = False,
                  mesh: tuple[int, int, int] = (-1, 1, 1)) -> tuple[steps.TrainProgram, Any, dict[str, jax.Array]]:
  """`(program, state, batch)`: the prior trainer's program for this model, its initial state, a random batch."""
  config = harness.gpt_config({**model_kwargs, "remat": remat}, batch, dtype=jnp.dtype(dtype).name, mesh=mesh)
  program = steps.gpt_program(config, sharding.make_mesh(config))
  state = program.init(program.init_rng)
  model = program.model
  inputs = harness.random_batch(program.abstract_batch, {"codes": model.n_codes, "label": model.class_cond_dim or 1})
  return program, state, inputs


def run_workload(name: str, spec: dict[str, Any], args, matmul: float, deadline: float | None) -> dict[str, Any]:
  model_kwargs = dict(spec["model"])
  if args.quick:
    model_kwargs = {**model_kwargs, **TINY, "shape": (min(model_kwargs["shape"][0], 2), 8, 8)}
    if model_kwargs.get("n_cond_frames"):
      model_kwargs["frame_shape"] = (16, 16)
  dtype = jnp.dtype(spec.get("dtype", "float32"))
  if spec.get("kind") == "frame_encoder":
    return run_frame_encoder(name, spec, model_kwargs, args, matmul, deadline)
  program, state, batch = train_program(model_kwargs, spec["batch"], dtype, remat=spec.get("remat", False))
  model = program.model
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  row: dict[str, Any] = {
      "name": name, **{k: v for k, v in spec.items() if k != "model"},
      "model": {k: list(v) if isinstance(v, tuple) else v for k, v in model_kwargs.items()},
      "attn_type": model.attn_type, "seq_len": model.seq_len, "dtype": str(dtype), "params": n_params,
      "remat": bool(spec.get("remat", False)), "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "model_flops": model_flops(model, spec["batch"]), "train_step": "videogpt_jax.train.steps",
  }
  row.update(harness.measure(program.train_step, (state, batch), stateful=True, warmup=args.warmup, repeats=args.repeats, deadline=deadline,
                             matmul_flops=matmul))
  if "median_s" in row:
    row["tokens_per_s"] = spec["batch"] * model.seq_len / row["median_s"]
    row["model_flops_utilisation_analytic"] = row["model_flops"] / row["median_s"] / matmul
    if "reference_tokens_per_s" in spec:
      row["speedup_vs_reference"] = row["tokens_per_s"] / spec["reference_tokens_per_s"]
      ok = row["speedup_vs_reference"] >= spec["speedup_target"]
      if "mfu_target" in spec:
        ok = ok and row.get("mfu_vs_measured_matmul", 0.0) >= spec["mfu_target"]
      row["meets_target"] = bool(ok) and not args.quick
  if "memory_target_bytes" in spec:
    xla_bytes = row.get("temp_bytes", 0) + row.get("argument_bytes", 0) + row.get("output_bytes", 0)
    row["xla_total_bytes"] = xla_bytes
    row["dense_mask_bytes_avoided"] = model.seq_len ** 2  # a bool (L, L) mask, never built
    rss = row.get("rss_run_peak_bytes", 0)
    row["meets_target"] = bool(max(xla_bytes, rss) < spec["memory_target_bytes"]) and not args.quick
  return row


def run_frame_encoder(name, spec, model_kwargs, args, matmul, deadline) -> dict[str, Any]:
  """Forward + backward of the prior's frame encoder alone (sum of squares loss), to attribute step time."""
  encoder = conditioning.FrameEncoder(gpt_lib.COND_DIM, gpt_lib.FRAME_STRIDE)
  frames = jax.random.uniform(jax.random.PRNGKey(2), (spec["batch"], model_kwargs["n_cond_frames"],
                                                      *model_kwargs["frame_shape"], 3), jnp.float32, -0.5, 0.5)
  params = jax.jit(encoder.init)(jax.random.PRNGKey(0), frames[:1])

  def step(p, x):
    return jax.grad(lambda q: jnp.mean(encoder.apply(q, x) ** 2))(p)  # a component's cost, not a train step

  row: dict[str, Any] = {"name": name, **{k: v for k, v in spec.items() if k != "model"},
                         "frame_shape": list(model_kwargs["frame_shape"]),
                         "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))}
  row.update(harness.measure(step, (params, frames), warmup=args.warmup, repeats=args.repeats, deadline=deadline,
                             matmul_flops=matmul))
  return row


def report(name: str, row: dict[str, Any]) -> str | None:
  if "median_s" not in row:
    return None
  if "seq_len" not in row:
    return (f"{name:24s} {row['median_s'] * 1e3:9.1f} ms  compile {row['compile_s']:5.1f} s  MFU(xla) "
            f"{row.get('mfu_vs_measured_matmul', 0):.1%}")
  extra = f"  speedup {row['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in row else ""
  return (f"{name:24s} L={row['seq_len']:5d} {row['median_s'] * 1e3:9.1f} ms  {row['tokens_per_s']:8.0f} tok/s  "
          f"compile {row['compile_s']:5.1f} s  MFU(xla) {row.get('mfu_vs_measured_matmul', 0):.1%}  MFU(analytic) "
          f"{row['model_flops_utilisation_analytic']:.1%}  temp {row.get('temp_bytes', 0) / 2**20:.0f} MiB  "
          f"RSS {row['rss_run_peak_bytes'] / 2**20:.0f} MiB{extra}")


def main() -> None:
  args = harness.suite_parser(__doc__, "tiny model and grid (a smoke test of the script)").parse_args()
  harness.run_suite(
      args, WORKLOADS, default_name="prior_bench", run_workload=run_workload, report=report,
      description="GPT prior train step (the trainer's: cross-entropy, dropout on, clipping, Adam on the schedule, "
                  "shardings and donation; one jit) on CPU; "
                  "median of timed steps after warm-up; compile separate. model_flops is analytic "
                  "(6 x matmul params x tokens + attention scores); flops is XLA's (loop bodies once).")


if __name__ == "__main__":
  main()
