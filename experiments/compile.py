r"""Compiles a config's train step (or a prior's sampler) for a TPU slice on this host, without a TPU, and says
whether it fits.

  python -m experiments.compile --config=experiments/configs/gpt_bair.py --topology=v5e:2x4
  python -m experiments.compile --config=experiments/configs/vqvae_bair.py --topology=v4:2x2x1 \
      --config.compute_dtype=bfloat16 --config.mesh=-1,1,1
  python -m experiments.compile --config=experiments/configs/gpt_bair.py --topology=v5e:2x4 --program=sample

Same config files and `--config.x=` overrides as training. The step is the trainer's own (clipping, schedule,
shardings, donation), lowered with abstract arguments over the config's `(data, fsdp, model)` mesh of the
topology's chips and compiled by the TPU compiler (libtpu: `pip install -e '.[tpu]'`). Prints per-chip HBM
(arguments, outputs, temporaries against the chip's usable HBM), the compiler's flops and bytes, the roofline
step and compute-bound ceiling, and a verdict line: "fits" with the headroom, or "DOES NOT FIT" (exit status 1).
`--program=sample` compiles the prior's KV-cached sampler instead (`--sample_batch` samples, default the config's
global batch, split over `data` x `fsdp`) and reports its per-chip HBM and KV caches.

A prior's code grid comes from its VQ-VAE config (`--vqvae_config`, default the dataset's `vqvae_<name>.py` next
to `--config`, with `runlocal` when `--config` has it); no checkpoint or data is read.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # This host's own JAX stays on CPU; TPU devices are compile-only.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from videogpt_jax import aot, cli  # noqa: E402
from videogpt_jax.train import aot_steps  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. experiments/configs/gpt_bair.py.",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:2x4 (8 chips), v4:2x2x1, v5e:16x16.")
  flags.DEFINE_string("vqvae_config", "", "A prior's VQ-VAE config file (default: the dataset's, see above).")
  flags.DEFINE_string("json", "", "Also write the report as JSON to this path.")
  flags.DEFINE_enum("program", "train", ["train", "sample"], "What to compile: the train step, or a prior's "
                    "KV-cached sampler.")
  flags.DEFINE_integer("sample_batch", 0, "--program=sample: samples decoded together (0: the config's "
                       "batch_size).", lower_bound=0)
  flags.DEFINE_bool("layer_costs", True, "A prior with scan_layers: also compile it with 1 and 2 blocks unscanned, "
                    "for flops and bytes per block (the compiler counts a loop's body once).")
  flags.mark_flags_as_required(["config", "topology"])


def _vqvae_config_arg(config_arg: str, dataset: str) -> str:
  path, _, arg = config_arg.partition(":")
  runlocal = "runlocal" in [t.strip() for t in arg.split(",")]
  return str(pathlib.Path(path).parent / f"vqvae_{dataset}.py") + (":runlocal" if runlocal else "")


def main(argv):
  cli.no_extra_args(argv)
  try:
    devices = aot.topology_devices(FLAGS.topology)
  except (aot.TpuUnavailableError, ValueError) as e:
    raise cli.UsageError(str(e)) from e
  config = FLAGS.config
  vqvae_config = None
  if aot_steps.stage(config) == "gpt":
    vqvae_config = _load_config(FLAGS.vqvae_config or _vqvae_config_arg(_config_arg(), config.data.name))
  elif FLAGS.program == "sample":
    raise cli.UsageError(f"--program=sample: {_config_arg()} is a VQ-VAE's config; only a prior has a sampler")
  if FLAGS.program == "sample":
    try:
      report, _ = aot_steps.compile_sampler(config, devices, vqvae_config=vqvae_config, batch=FLAGS.sample_batch)
    except ValueError as e:  # a batch the mesh cannot split
      raise cli.UsageError(f"--sample_batch={FLAGS.sample_batch or config.batch_size}: {e}") from e
  else:
    report, _ = aot_steps.compile_train_step(config, devices, vqvae_config=vqvae_config,
                                             layer_costs=FLAGS.layer_costs)
  print(aot.format_report(report))
  if FLAGS.json:
    pathlib.Path(FLAGS.json).write_text(json.dumps(report.to_json(), indent=2))
  sys.exit(0 if report.fits else 1)


def _load_config(arg: str):
  """`get_config(arg)` of a config file given as `path[:arg]`."""
  path, _, cfg_arg = arg.partition(":")
  if not pathlib.Path(path).is_file():
    raise cli.UsageError(f"--vqvae_config: no config file {path!r}")
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(cfg_arg or None)


def _config_arg() -> str:
  """`--config` as given on the command line (file and `:arg`)."""
  for a in sys.argv[1:]:
    if a.startswith("--config="):
      return a.split("=", 1)[1]
  return config_flags.get_config_filename(FLAGS["config"])


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
