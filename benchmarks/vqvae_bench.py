"""VQ-VAE benchmarks on this machine: train step, encode, decode, BAIR-size train step, batch scaling, bf16.

Each workload is compiled ahead of time (compile time reported separately), run for warm-up + >= 5 timed steps
(median reported), and its peak memory is taken both from the process (RSS, reset per workload) and from XLA's
memory analysis. The machine's float32 matmul rate (2048^2, jitted) is measured in the same run, and model-FLOPs
utilisation is XLA's cost-analysis flops / step time / that rate.

The train step is the VQ-VAE trainer's own (`videogpt_jax.train.steps.vqvae_program` for the trainer's default
config around each model): reconstruction + commitment loss, `batch_stats` and the EMA codebook updated by the
forward pass, global-norm clipping, Adam on the cosine schedule, the state's shardings and donation, one
`jax.jit`; optional bf16 compute over float32 parameters and optimizer state.

  python benchmarks/vqvae_bench.py                # writes benchmarks/results/vqvae_bench.json
  python benchmarks/vqvae_bench.py --quick        # tiny shapes, seconds: checks the script, not the speed
  python benchmarks/vqvae_bench.py --only train_b4,encode_b4 --deadline 13:25
"""
from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import harness  # noqa: E402
from videogpt_jax import sharding  # noqa: E402
from videogpt_jax.models import vqvae as vqvae_lib  # noqa: E402
from videogpt_jax.train import steps  # noqa: E402

# The reference workloads (original PyTorch VideoGPT on a 2-core machine of this kind, float32, 2 threads).
SMALL = dict(embedding_dim=64, n_codes=512, n_hiddens=128, n_res_layers=2, downsample=(4, 4, 4))
BAIR = dict(embedding_dim=256, n_codes=1024, n_hiddens=240, n_res_layers=4, downsample=(4, 2, 2))
TINY = dict(embedding_dim=16, n_codes=32, n_hiddens=16, n_res_layers=1, downsample=(2, 2, 2))
CLIP = (16, 64, 64)
TINY_CLIP = (4, 16, 16)

# name -> (model, batch, kind, dtype, reference, target); reference/target in the unit of `unit_of(kind)`.
WORKLOADS: dict[str, dict[str, Any]] = {
    "train_b4": dict(model="small", batch=4, kind="train", reference_s=0.92, speedup_target=1.5),
    "encode_b4": dict(model="small", batch=4, kind="encode", reference_clips_per_s=26.5, speedup_target=1.5),
    "decode_b4": dict(model="small", batch=4, kind="decode", reference_clips_per_s=24.5, speedup_target=1.5),
    "train_bair_b1": dict(model="bair", batch=1, kind="train", reference_s=4.3, speedup_target=1.5),
    "train_b1": dict(model="small", batch=1, kind="train", group="batch_scaling"),
    "train_b2": dict(model="small", batch=2, kind="train", group="batch_scaling"),
    "train_b8": dict(model="small", batch=8, kind="train", group="batch_scaling"),
    "train_b4_bf16": dict(model="small", batch=4, kind="train", dtype="bfloat16", reference_s=0.92,
                          speedup_target=1.5, group="bf16"),
    "encode_b4_bf16": dict(model="small", batch=4, kind="encode", dtype="bfloat16", reference_clips_per_s=26.5,
                           speedup_target=1.5, group="bf16"),
    "decode_b4_bf16": dict(model="small", batch=4, kind="decode", dtype="bfloat16", reference_clips_per_s=24.5,
                           speedup_target=1.5, group="bf16"),
}


def build(model_kwargs: dict[str, Any], clip: tuple[int, int, int], batch: int, conv_impl: str = "auto",
          remat: bool = False):
  """`(model, variables, video)`: an initialised VQ-VAE and a random batch `(B, T, H, W, 3)` in [-0.5, 0.5]."""
  model = vqvae_lib.VQVAE(**model_kwargs, conv_impl=conv_impl, remat=remat)
  video = jax.random.uniform(jax.random.PRNGKey(1), (batch, *clip, 3), jnp.float32, -0.5, 0.5)
  init = jax.jit(lambda r, v: model.init({"params": r, "codebook": r}, v, train=False))
  variables = init(jax.random.PRNGKey(0), video[:1])
  return model, variables, video


def train_program(model_kwargs: dict[str, Any], clip: tuple[int, int, int], batch: int, dtype: Any = jnp.float32,
                  conv_impl: str = "auto", remat: bool = False, mesh: tuple[int, int, int] = (-1, 1, 1)
                  ) -> tuple[steps.TrainProgram, Any, dict[str, jax.Array]]:
  """`(program, state, batch)`: the VQ-VAE trainer's program for this model, its initial state, a random batch."""
  config = harness.vqvae_config({**model_kwargs, "conv_impl": conv_impl, "remat": remat}, clip, batch,
                                dtype=jnp.dtype(dtype).name, mesh=mesh)
  program = steps.vqvae_program(config, sharding.make_mesh(config))
  return program, program.init(program.init_rng), harness.random_batch(program.abstract_batch, {})


def run_workload(name: str, spec: dict[str, Any], args, matmul: float, deadline: float | None) -> dict[str, Any]:
  model_kwargs = {"small": SMALL, "bair": BAIR}[spec["model"]]
  clip = CLIP
  if args.quick:
    model_kwargs, clip = TINY, TINY_CLIP
  dtype = jnp.dtype(spec.get("dtype", "float32"))
  row: dict[str, Any] = {"name": name, **{k: v for k, v in spec.items() if k != "model"},
                         "model_name": spec["model"], "model": {k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in model_kwargs.items()},
                         "clip": list(clip), "dtype": str(dtype), "conv_impl": args.conv_impl}
  timing = dict(warmup=args.warmup, repeats=args.repeats, deadline=deadline, matmul_flops=matmul)
  if spec["kind"] == "train":
    program, state, batch = train_program(model_kwargs, clip, spec["batch"], dtype, args.conv_impl)
    row["train_step"] = "videogpt_jax.train.steps"
    row.update(harness.measure(program.train_step, (state, batch), stateful=True, **timing))
  else:
    model, variables, video = build(model_kwargs, clip, spec["batch"], args.conv_impl)
    codes = jax.jit(lambda v, x: model.apply(v, x, method=vqvae_lib.VQVAE.encode_to_indices))(variables, video)
    if dtype != jnp.float32:  # every float variable (BatchNorm statistics, codebook) too, or they promote to f32
      variables = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                               variables)
    if spec["kind"] == "encode":
      fn = lambda v, x: model.apply(v, x.astype(dtype), method=vqvae_lib.VQVAE.encode_to_indices)  # noqa: E731
      x = video
    else:
      fn = lambda v, c: model.apply(v, c, method=vqvae_lib.VQVAE.decode_from_indices)  # noqa: E731
      x = codes
    row.update(harness.measure(fn, (variables, x), **timing))
  if "median_s" in row:
    row["clips_per_s"] = spec["batch"] / row["median_s"]
    if "reference_s" in spec:
      row["speedup_vs_reference"] = spec["reference_s"] / row["median_s"]
    if "reference_clips_per_s" in spec:
      row["speedup_vs_reference"] = row["clips_per_s"] / spec["reference_clips_per_s"]
    if "speedup_target" in spec:
      row["meets_target"] = bool(row["speedup_vs_reference"] >= spec["speedup_target"]) and not args.quick
  return row


def report(name: str, row: dict[str, Any]) -> str | None:
  if "median_s" not in row:
    return None
  extra = f"  speedup {row['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in row else ""
  return (f"{name:16s} {row['median_s'] * 1e3:9.1f} ms  {row['clips_per_s']:7.2f} clips/s  compile "
          f"{row['compile_s']:5.1f} s  MFU {row.get('mfu_vs_measured_matmul', 0):.1%}  temp "
          f"{row.get('temp_bytes', 0) / 2**20:.0f} MiB  RSS {row['rss_run_peak_bytes'] / 2**20:.0f} MiB{extra}")


def main() -> None:
  parser = harness.suite_parser(__doc__, "tiny model and clips (a smoke test of the script)")
  parser.add_argument("--conv_impl", default="auto")
  args = parser.parse_args()
  harness.run_suite(
      args, WORKLOADS, default_name="vqvae_bench", run_workload=run_workload, report=report,
      description="VQ-VAE train step (the trainer's: clipping, Adam on the schedule, shardings and donation; one "
                  "jit), encode_to_indices and "
                  "decode_from_indices on CPU; median of timed steps after warm-up; compile separate.")


if __name__ == "__main__":
  main()
