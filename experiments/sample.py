r"""Samples videos from a trained prior and writes them as a GIF grid and an `.npz` of codes and frames.

  python -m experiments.sample --gpt_workdir=/tmp/gpt --vqvae_workdir=/tmp/vqvae --output=/tmp/samples \
      --num_samples=8 [--labels=0,5,...] [--temperature=1.0 --top_k=... --top_p=...]

A frame-conditional prior takes its conditioning frames from the first clips of its config's eval split. Multi-host
flags as in train_vqvae.py: every process joins (a pod slice's processes must), each samples the same videos on its
own devices, process 0 writes them.
"""
from __future__ import annotations

import os

import imageio
import jax
import numpy as np
from absl import flags, logging

import videogpt_jax
from experiments import launch
from videogpt_jax import checkpointing, cli, inference
from videogpt_jax.models import conditioning, sampling
from videogpt_jax.train import common, config_checks

flags.DEFINE_string("gpt_workdir", None, "Workdir of a train_gpt.py run.")
flags.DEFINE_string("vqvae_workdir", None, "Workdir of its VQ-VAE (default: the one in the GPT's config).")
flags.DEFINE_string("output", None, "Folder for samples.gif and samples.npz.")
flags.DEFINE_integer("num_samples", 8, "How many videos.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_float("temperature", 1.0, "Softmax temperature (0: greedy).")
flags.DEFINE_integer("top_k", None, "Keep the k most likely codes per step.")
flags.DEFINE_float("top_p", None, "Nucleus sampling mass.")
flags.DEFINE_list("labels", None, "Class labels (one per sample) for a class-conditional prior.")
flags.DEFINE_integer("step", None, "Checkpoint step of the prior (default: latest).")
flags.mark_flags_as_required(["gpt_workdir", "output"])
FLAGS = flags.FLAGS


def _saved_kind(flag: str, workdir: str) -> str:
  """"vqvae" or "gpt": what the checkpoints of `workdir` (a training run or a converted checkpoint) hold."""
  config_checks.check_directory_flag(flag, workdir, must_exist=True)
  root = common.checkpoint_dir(workdir)
  config = checkpointing.peek_config(root if root.is_dir() else workdir)
  if config is None:
    raise cli.UsageError(f"{flag}={workdir}: no checkpoint there (expected {root}/<step>)")
  if "kind" in config:  # converted from the original
    return config["kind"]
  return "gpt" if "vqvae_workdir" in config or "derived" in config else "vqvae"


def check_flags() -> None:
  """Everything the flags can say is wrong, before JAX starts or anything is written."""
  launch.check_distributed_flags(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  kind = _saved_kind("--gpt_workdir", FLAGS.gpt_workdir)
  if kind != "gpt":
    raise cli.UsageError(f"--gpt_workdir={FLAGS.gpt_workdir}: holds a {kind}, not a prior (a train_gpt.py workdir)")
  if FLAGS.vqvae_workdir:
    kind = _saved_kind("--vqvae_workdir", FLAGS.vqvae_workdir)
    if kind != "vqvae":
      raise cli.UsageError(f"--vqvae_workdir={FLAGS.vqvae_workdir}: holds a {kind}, not a VQ-VAE")
  config_checks.check_directory_flag("--output", FLAGS.output, must_exist=False)
  if FLAGS.num_samples < 1:
    raise cli.UsageError(f"--num_samples={FLAGS.num_samples}: must be a positive integer")
  if FLAGS.temperature < 0:
    raise cli.UsageError(f"--temperature={FLAGS.temperature}: must be >= 0 (0: greedy)")
  if FLAGS.top_k is not None and FLAGS.top_k < 1:
    raise cli.UsageError(f"--top_k={FLAGS.top_k}: must be >= 1")
  if FLAGS.top_p is not None and not 0.0 < FLAGS.top_p <= 1.0:
    raise cli.UsageError(f"--top_p={FLAGS.top_p}: must be in (0, 1]")
  if FLAGS.labels and not all(x.strip().lstrip("-").isdigit() for x in FLAGS.labels):
    raise cli.UsageError(f"--labels={','.join(FLAGS.labels)}: must be integer class ids")


def main(argv):
  cli.no_extra_args(argv)
  check_flags()
  launch.setup()
  gpt, variables, config = inference.load_gpt(FLAGS.gpt_workdir, FLAGS.step)
  vqvae, vq_vars, _ = inference.load_vqvae(FLAGS.vqvae_workdir or config.vqvae_workdir)
  n = FLAGS.num_samples
  cond = labels = None
  if gpt.class_cond_dim:
    if not FLAGS.labels or len(FLAGS.labels) != n:
      raise cli.UsageError(f"this prior is class-conditional: pass --labels with {n} class ids")
    labels = np.asarray([int(x) for x in FLAGS.labels], np.int32)
  if gpt.n_cond_frames:
    from videogpt_jax.data import pipeline  # Deferred: the data pipeline imports TensorFlow.
    from videogpt_jax.train import inputs
    it = pipeline.make_eval_iterator(inputs.load_builder(config), split=config.data.get("eval_split", "test"),
                                     global_batch_size=n, sharding=None, seq_len=int(config.data.seq_len),
                                     resolution=int(config.data.resolution), n_cond_frames=gpt.n_cond_frames)
    cond = next(iter(it))["cond_frames"]
  codes = videogpt_jax.sample(gpt, variables, jax.random.key(FLAGS.seed), n,
                              cond=conditioning.make_cond(frames=cond, label=labels),
                              temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p)
  video = np.asarray(sampling.decode_to_video(vqvae, vq_vars, codes))  # (n, T, H, W, 3) uint8
  if not common.is_main_process():
    return
  os.makedirs(FLAGS.output, exist_ok=True)
  np.savez(os.path.join(FLAGS.output, "samples.npz"), codes=np.asarray(codes), video=video)
  # One GIF: the clips side by side, frame by frame.
  frames = np.concatenate(list(video), axis=2)  # (T, H, n * W, 3)
  imageio.mimsave(os.path.join(FLAGS.output, "samples.gif"), list(frames), duration=0.1, loop=0)
  logging.info("wrote %d samples to %s", n, FLAGS.output)


if __name__ == "__main__":
  launch.define_distributed_flags()
  cli.run(main)
