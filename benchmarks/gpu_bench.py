"""The paper configs' train steps and the BAIR prior's sampler, run and timed on one GPU.

Each workload builds the trainer's own program (`videogpt_jax.train.steps` through `aot_steps.train_program`: the
config file's model, optimizer, clipping, schedule, shardings and donation) at a per-GPU batch, compiles it, runs a
warm-up step and 5 timed steps on random data and records the median step, the throughput, the compile time and
the GPU's peak memory (`Device.memory_stats()`). The sampler row times `videogpt_jax.sample`'s KV-cached loop for
a batch of samples. No data, checkpoint or parameter file is read.

  bash benchmarks/gpu_bench.sh                     # on a GPU machine -> results/gpu_bench.json
  python benchmarks/gpu_bench.py --quick           # runlocal configs on any backend: checks the script

`docs/benchmarks.md` reports `results/gpu_bench.json` as measured rows, or says the GPU rows were not measured.
"""
from __future__ import annotations

import importlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import harness  # noqa: E402
from videogpt_jax import sharding  # noqa: E402
from videogpt_jax.models import conditioning, sampling  # noqa: E402
from videogpt_jax.train import aot_steps  # noqa: E402

BF16 = {"compute_dtype": "bfloat16"}
PRIOR = {**BF16, "model.remat": True, "model.scan_layers": True}
# name -> config file (module, arg), its VQ-VAE's (priors), per-GPU batch, overrides; `sample`: time the sampler.
WORKLOADS: dict[str, dict[str, Any]] = {
    "bair_vqvae": dict(config=("vqvae_bair", None), batch=8, overrides=BF16),
    "bair_prior": dict(config=("gpt_bair", None), vqvae=("vqvae_bair", None), batch=8, overrides=PRIOR),
    "bair_prior_sample": dict(config=("gpt_bair", None), vqvae=("vqvae_bair", None), batch=8, overrides=BF16,
                              sample=True),
    "ucf101_vqvae": dict(config=("vqvae_ucf101", None), batch=8, overrides=BF16),
    "ucf101_prior_cc": dict(config=("gpt_ucf101", "classcond"), vqvae=("vqvae_ucf101", None), batch=8,
                            overrides=PRIOR),
}


def load_config(name: str, arg: str | None, quick: bool, overrides: dict[str, Any], batch: int):
  """`experiments/configs/<name>.py`'s config (`runlocal` with --quick) with `overrides` and the batch."""
  args = ",".join(a for a in (arg, "runlocal" if quick else None) if a) or None
  config = importlib.import_module(f"experiments.configs.{name}").get_config(args)
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = config
    for p in path:
      node = node[p]
    node[leaf] = value
  config.batch_size = 2 if quick else batch
  config.mesh, config.num_devices = (1, 1, 1), 1
  return config


def run_workload(name: str, spec: dict[str, Any], args, matmul: float, deadline) -> dict[str, Any]:
  del matmul
  config = load_config(*spec["config"], args.quick, spec["overrides"], spec["batch"])
  vqvae_config = load_config(*spec["vqvae"], args.quick, {}, spec["batch"]) if "vqvae" in spec else None
  mesh = sharding.make_mesh(config, devices=jax.devices()[:1])
  program = aot_steps.train_program(config, mesh, vqvae_config)
  row: dict[str, Any] = {"name": name, "config": f"{spec['config'][0]}.py" + (f":{spec['config'][1]}" if
                                                                              spec['config'][1] else ""),
                         "overrides": {k: v for k, v in spec["overrides"].items()}, "batch": config.batch_size,
                         "device": jax.devices()[0].device_kind}
  with jax.set_mesh(mesh):
    state = program.init(program.init_rng)
    if spec.get("sample"):
      row.update(_time_sampler(program, state, config.batch_size, args))
    else:
      model = program.model
      high = {"codes": getattr(model, "n_codes", 1), "label": getattr(model, "class_cond_dim", None) or 1}
      batch = harness.random_batch(program.abstract_batch, high)
      row.update(harness.measure(program.train_step, (state, batch), stateful=True, warmup=args.warmup,
                                 repeats=args.repeats, deadline=deadline))
      if "median_s" in row:
        clip = program.abstract_batch.get("video", program.abstract_batch.get("codes"))
        row["clips_per_s"] = clip.shape[0] / row["median_s"]
        if "codes" in program.abstract_batch:
          row["tokens_per_s"] = clip.size / row["median_s"]
  row.update(_peak_memory())
  return row


def _time_sampler(program, state, n: int, args) -> dict[str, Any]:
  gpt = program.model
  variables = {"params": state.params, **state.model_state}
  cond = conditioning.make_cond(
      frames=jnp.zeros((n, gpt.n_cond_frames, *gpt.frame_shape, 3)) if gpt.n_cond_frames else None,
      label=jnp.zeros((n,), jnp.int32) if gpt.class_cond_dim else None)
  run = lambda seed: sampling.sample(gpt, variables, jax.random.key(seed), n, cond=cond)  # noqa: E731
  t0 = time.perf_counter()
  harness.block(run(0))  # compiles and runs once
  first_s = time.perf_counter() - t0
  times = harness.time_steps(lambda: run(1), warmup=0, repeats=max(1, min(args.repeats, 2)))
  return {"first_call_s": first_s, **times, "tokens": gpt.seq_len, "samples": n,
          "tokens_per_s": n * gpt.seq_len / times["median_s"]}


def _peak_memory() -> dict[str, Any]:
  stats = jax.devices()[0].memory_stats() or {}  # None on CPU
  return {k: stats[k] for k in ("peak_bytes_in_use", "bytes_limit") if k in stats}


def report(name: str, row: dict[str, Any]) -> str | None:
  if "median_s" not in row:
    return None
  rate = f"{row['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in row else f"{row['clips_per_s']:.2f} clips/s"
  peak = f", peak {row['peak_bytes_in_use'] / 2**30:.2f} GiB" if "peak_bytes_in_use" in row else ""
  return f"{name} on {row['device']}: {row['median_s'] * 1e3:.1f} ms ({rate}), batch {row['batch']}{peak}"


def table(data: dict[str, Any] | None) -> list[str]:
  """docs/benchmarks.md's GPU rows: measured rows of `results/gpu_bench.json`, or why there are none."""
  rows = [r for r in (data or {}).get("rows", []) if "median_s" in r and not data.get("quick")]
  if not rows:
    return ["Not measured: no session that ran the benchmarks had a GPU. On a GPU machine, "
            "`bash benchmarks/gpu_bench.sh` writes `results/gpu_bench.json`, which this table then shows."]
  out = ["| row | config | device | batch | step (median) | throughput | compile | peak GPU memory |",
         "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    rate = f"{r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else f"{r['clips_per_s']:.2f} clips/s"
    peak = f"{r['peak_bytes_in_use'] / 2**30:.2f} GiB" if "peak_bytes_in_use" in r else "–"
    compile_s = f"{r['compile_s']:.0f} s" if "compile_s" in r else f"{r.get('first_call_s', 0):.0f} s (first call)"
    out.append(f"| {r['name']} | `{r['config']}` {' '.join(f'{k}={v}' for k, v in r['overrides'].items())} | "
               f"{r['device']} | {r['batch']} | {r['median_s'] * 1e3:.1f} ms | {rate} | {compile_s} | {peak} |")
  return out


def main() -> None:
  parser = harness.suite_parser(__doc__, "runlocal configs (any backend): checks the script, not the speed")
  args = parser.parse_args()
  harness.run_suite(args, WORKLOADS, default_name="gpu_bench", description=__doc__.split("\n\n")[0],
                    run_workload=run_workload, report=report, header={"backend": jax.default_backend()},
                    matmul_at_end=False)


if __name__ == "__main__":
  main()
