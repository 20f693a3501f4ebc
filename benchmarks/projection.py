"""Accelerator projections for the paper's configurations, from XLA's analysis of the compiled train step.

No accelerator is available here, so nothing big is executed: each train step (the trainers' own, built by
`videogpt_jax.train.steps` from the trainer's default config around the model: bf16 compute over float32
parameters, clipping, Adam on the schedule, donation) is compiled for a SIMULATED 8-device CPU mesh
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`, set for a worker subprocess) of shape
`(data, fsdp, model) = (8, 1, 1)`: the global batch sharded over `data`, the train state replicated (pure data
parallelism). Only abstract values are compiled (`program.abstract_state`, `program.abstract_batch`). From the compiled SPMD program, which is per device:
  - flops and bytes accessed: XLA's cost analysis (the CPU compiler's fusion decisions; an accelerator's
    compiler fuses differently, so bytes are a rough proxy);
  - per-device memory: XLA's memory analysis (arguments + outputs + temporaries, minus donated aliases).
The implied step time on one chip of each accelerator is the roofline `max(flops / peak, bytes / bandwidth)`;
the utilisation ceiling is `(flops / peak) / that time` (1.0 = compute bound). Peaks are published specs, not
measurements: TPU v4 275 TFLOP/s bf16, 1.2 TB/s HBM, 32 GiB; TPU v5e 197 TFLOP/s bf16, 819 GB/s, 16 GiB;
H100 SXM 989 TFLOP/s bf16 dense, 3.35 TB/s, 80 GB.

  python benchmarks/projection.py            # writes benchmarks/results/projection.json
  python benchmarks/projection.py --quick    # small stand-ins: checks the script
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

N_DEVICES = 8
ACCELERATORS = {
    "tpu_v4": dict(peak_flops=275e12, hbm_bytes_per_s=1.2e12, hbm_bytes=32 * 2**30,
                   source="published spec: 275 TFLOP/s bf16, 1.2 TB/s, 32 GiB HBM per chip"),
    "tpu_v5e": dict(peak_flops=197e12, hbm_bytes_per_s=819e9, hbm_bytes=16 * 2**30,
                    source="published spec: 197 TFLOP/s bf16, 819 GB/s, 16 GiB HBM per chip"),
    "h100_sxm": dict(peak_flops=989e12, hbm_bytes_per_s=3.35e12, hbm_bytes=80e9,
                     source="published spec: 989 TFLOP/s bf16 dense, 3.35 TB/s, 80 GB HBM"),
}

# The paper's hidden sizes (512, 1024) do not divide by 3, which the original's concatenated per-axis position
# embedding requires: the nearest widths that divide by 3 and by the head count are used (516 = 4 x 129,
# 1032 = 8 x 129), about 2-3% more flops than the paper's.
CONFIGS: dict[str, dict[str, Any]] = {
    "bair_vqvae": dict(kind="vqvae", batch=32, clip=(16, 64, 64),
                       model=dict(embedding_dim=256, n_codes=1024, n_hiddens=240, n_res_layers=4,
                                  downsample=(2, 2, 2)),
                       note="paper Table 8: 16x64x64 -> 8x32x32, K=1024, D=256; h=240, 4 residual layers"),
    "ucf101_vqvae": dict(kind="vqvae", batch=32, clip=(16, 128, 128),
                         model=dict(embedding_dim=256, n_codes=2048, n_hiddens=240, n_res_layers=4,
                                    downsample=(4, 4, 4)),
                         note="released ucf101_stride4x4x4: 16x128x128 -> 4x32x32, K=2048, D=256"),
    "bair_prior": dict(kind="prior", batch=32,
                       model=dict(shape=(8, 32, 32), n_codes=1024, embedding_dim=256, hidden_dim=516, heads=4,
                                  layers=16, attn_type="sparse", n_cond_frames=1, frame_shape=(64, 64)),
                       note="paper: 16 layers, 4 heads, hidden 512 (516 here), 8x32x32, 1-frame conditioning, "
                            "batch 32, sparse attention"),
    "ucf101_prior": dict(kind="prior", batch=32,
                         model=dict(shape=(4, 32, 32), n_codes=2048, embedding_dim=256, hidden_dim=1032, heads=8,
                                    layers=20, attn_type="sparse", class_cond_dim=101),
                         note="paper: 20 layers, 8 heads, hidden 1024 (1032 here), 4x32x32, class-conditional; "
                              "batch 32 assumed (not stated in the spec)"),
}
QUICK = {
    "bair_vqvae": dict(batch=8, clip=(4, 16, 16), model=dict(embedding_dim=16, n_codes=32, n_hiddens=16,
                                                             n_res_layers=1, downsample=(2, 2, 2))),
    "ucf101_vqvae": dict(batch=8, clip=(4, 16, 16), model=dict(embedding_dim=16, n_codes=32, n_hiddens=16,
                                                               n_res_layers=1, downsample=(2, 2, 2))),
    "bair_prior": dict(batch=8, model=dict(shape=(2, 8, 8), n_codes=32, embedding_dim=16, hidden_dim=48, heads=4,
                                           layers=2, attn_type="sparse", n_cond_frames=1, frame_shape=(16, 16))),
    "ucf101_prior": dict(batch=8, model=dict(shape=(2, 8, 8), n_codes=32, embedding_dim=16, hidden_dim=48,
                                             heads=4, layers=2, attn_type="sparse", class_cond_dim=5)),
}


def roofline(flops: float, nbytes: float, memory: float) -> dict[str, Any]:
  out = {}
  for name, acc in ACCELERATORS.items():
    t_compute, t_memory = flops / acc["peak_flops"], nbytes / acc["hbm_bytes_per_s"]
    step = max(t_compute, t_memory)
    out[name] = {"compute_s": t_compute, "memory_s": t_memory, "implied_step_s": step,
                 "utilisation_ceiling": t_compute / step if step else None,
                 "bound": "compute" if t_compute >= t_memory else "memory",
                 "fits_hbm": bool(memory <= acc["hbm_bytes"])}
  return out


# ------------------------------------------------------------------------------------------------- worker ----
def _compile_one(name: str, cfg: dict[str, Any], remat: bool) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, __file__.rsplit("/", 2)[0])
  from benchmarks import harness  # pylint: disable=import-outside-toplevel
  from videogpt_jax import sharding  # pylint: disable=import-outside-toplevel
  from videogpt_jax.train import steps  # pylint: disable=import-outside-toplevel

  batch, mesh_shape = cfg["batch"], (N_DEVICES, 1, 1)
  if cfg["kind"] == "vqvae":
    # "direct" is what an accelerator runs (one XLA convolution per layer); the CPU reformulations are for CPU.
    model = {**cfg["model"], "conv_impl": "direct", "remat": remat}
    config = harness.vqvae_config(model, tuple(cfg["clip"]), batch, dtype="bfloat16", mesh=mesh_shape)
    program = steps.vqvae_program(config, sharding.make_mesh(config))
    tokens = batch * int(np.prod(cfg["clip"]))
  else:
    config = harness.gpt_config({**cfg["model"], "remat": remat}, batch, dtype="bfloat16", mesh=mesh_shape)
    program = steps.gpt_program(config, sharding.make_mesh(config))
    tokens = batch * program.model.seq_len
  n_params = sum(int(x.size) for x in jax.tree.leaves(program.abstract_state.params))
  t0 = time.perf_counter()
  compiled = program.train_step.lower(program.abstract_state, program.abstract_batch).compile()
  compile_s = time.perf_counter() - t0
  info = harness.analysis(compiled)
  mem = compiled.memory_analysis()
  per_device = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes)
  row = {"name": name if not remat else f"{name}_remat", "config": name, "remat": remat, "kind": cfg["kind"],
         "note": cfg.get("note", ""), "train_step": "videogpt_jax.train.steps", "global_batch": batch,
         "per_device_batch": batch // N_DEVICES,
         "params": n_params, "tokens_or_pixels_per_step": tokens, "compile_s": compile_s,
         "model": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg["model"].items()},
         "per_device_flops": info.get("flops"), "per_device_bytes_accessed": info.get("bytes_accessed"),
         "per_device_memory_bytes": per_device, "alias_bytes": int(mem.alias_size_in_bytes),
         **{k: info[k] for k in ("temp_bytes", "argument_bytes", "output_bytes") if k in info}}
  if row["per_device_flops"]:
    row["roofline"] = roofline(row["per_device_flops"], row["per_device_bytes_accessed"] or 0.0, per_device)
  return row


def worker(args) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, __file__.rsplit("/", 2)[0])
  from benchmarks import harness  # pylint: disable=import-outside-toplevel

  if jax.device_count() != N_DEVICES:
    raise SystemExit(f"projection worker needs {N_DEVICES} (simulated) devices, has {jax.device_count()}")
  rec = harness.Recorder(args.name or ("projection_quick" if args.quick else "projection"), {
      "description": __doc__.split("\n\n")[1], "quick": args.quick, "n_devices": N_DEVICES,
      "mesh": {"data": N_DEVICES}, "compute_dtype": "bfloat16 (float32 parameters and Adam state)",
      "accelerators": ACCELERATORS, "no_gpu_or_tpu_available": True,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  })
  names = args.only.split(",") if args.only else list(CONFIGS)
  for name in names:
    cfg = {**CONFIGS[name], **(QUICK[name] if args.quick else {})}
    for remat in {"both": (False, True), "off": (False,), "on": (True,)}[args.remat]:
      row = rec.add(_compile_one(name, cfg, remat))
      acc = row.get("roofline", {})
      print(f"{row['name']:22s} compile {row['compile_s']:6.1f} s  {row['per_device_flops'] / 1e12:8.3f} TFLOP/dev  "
            f"{row['per_device_bytes_accessed'] / 1e9:8.2f} GB/dev  mem {row['per_device_memory_bytes'] / 2**30:7.2f} "
            f"GiB/dev  " + "  ".join(f"{k} {v['implied_step_s'] * 1e3:.0f} ms ({v['utilisation_ceiling']:.0%})"
                                      for k, v in acc.items()), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="small stand-in models")
  parser.add_argument("--only", default="", help=f"comma-separated subset of {list(CONFIGS)}")
  parser.add_argument("--remat", default="both", choices=("both", "off", "on"),
                      help="compile each step without and/or with per-block rematerialisation")
  parser.add_argument("--name", default="")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", *sys.argv[1:]]
  raise SystemExit(subprocess.call(cmd, env=env))


if __name__ == "__main__":
  main()
