"""Converts an original VideoGPT checkpoint into a videogpt_jax (Orbax) checkpoint.

    python -m videogpt_jax.convert --input=bair_stride4x2x2.ckpt --output=/ckpt/bair_vqvae --kind=vqvae

The output directory is a `videogpt_jax.checkpointing.Checkpointer` directory with one step (0) whose `state` is
the Flax variables (`params`, `batch_stats`, `codebook` for a VQ-VAE) and whose `config` is
`{"kind", "args", "source"}` (`args`: the original's hyperparameters, enough to rebuild the module).
The input is read with `torch.load(weights_only=True)`: files that would execute code when unpickled are refused.
"""
from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

from absl import flags, logging

from videogpt_jax import cli
from videogpt_jax.convert import checkpoint_io
from videogpt_jax.train import config_checks

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Original checkpoint: Lightning .ckpt or a torch.save'd state dict (.pt).")
flags.DEFINE_string("output", None, "Output directory for the Orbax checkpoint.")
flags.DEFINE_enum("kind", "vqvae", checkpoint_io.KINDS, "Which model to convert.")
flags.DEFINE_bool("overwrite", False, "Replace an existing, non-empty output directory.")
flags.DEFINE_string("args_json", None,
                    "JSON object of constructor arguments to add to (or override) those stored in the input "
                    "(needed for plain state dicts, which store none).")


# The module fields that rebuild it (`videogpt_jax.inference`); compute-only settings keep their defaults.
_MODULE_FIELDS = {
    "vqvae": ("embedding_dim", "n_codes", "n_hiddens", "n_res_layers", "downsample", "attention"),
    "gpt": ("shape", "n_codes", "embedding_dim", "hidden_dim", "heads", "layers", "attn_type", "n_cond_frames",
            "frame_shape", "class_cond_dim", "dropout", "attn_dropout", "sparse_block", "sparse_local_blocks"),
}


def module_config(module: Any) -> dict[str, Any]:
  """JSON-able constructor arguments of a converted `VQVAE` or `GPT`."""
  kind = "vqvae" if type(module).__name__ == "VQVAE" else "gpt"
  out = {}
  for name in _MODULE_FIELDS[kind]:
    value = getattr(module, name)
    out[name] = list(value) if isinstance(value, tuple) else value
  return out


def convert(input_path: str | pathlib.Path, output: str | pathlib.Path, kind: str = "vqvae",
            overwrite: bool = False, extra_args: dict[str, Any] | None = None) -> pathlib.Path:
  """Reads `input_path`, converts it, writes step 0 of a Checkpointer directory at `output`; returns `output`."""
  output = pathlib.Path(output).absolute()
  if output.exists() and (not output.is_dir() or any(output.iterdir())):
    if not overwrite:
      raise FileExistsError(f"output {output} already exists and is not empty; pass --overwrite to replace it")
    logging.info("removing existing %s", output)
    shutil.rmtree(output) if output.is_dir() else output.unlink()

  logging.info("reading %s (%s)", input_path, kind)
  state_dict, hparams = checkpoint_io.read_checkpoint(input_path, kind)
  hparams = {**hparams, **(extra_args or {})}
  logging.info("read %d tensors; hyperparameters: %s", len(state_dict), hparams)

  from videogpt_jax.convert import torch_videogpt  # noqa: PLC0415 (heavy: JAX/Flax)
  load = torch_videogpt.load_vqvae if kind == "vqvae" else torch_videogpt.load_gpt
  try:
    module, variables = load(state_dict, **hparams)
  except (KeyError, ValueError, TypeError) as e:
    detail = cli.one_line(str(e).strip("'\""))
    raise checkpoint_io.WeightsFileError(f"{input_path}: not our model: not an original VideoGPT {kind} "
                                         f"checkpoint ({detail})") from None
  logging.info("converted to %s", type(module).__name__)

  from videogpt_jax.checkpointing import Checkpointer  # noqa: PLC0415
  ckpt = Checkpointer(output, max_to_keep=1, async_save=False)
  config = {"kind": kind, "model": module_config(module), "args": json.loads(json.dumps(hparams, default=str)),
            "source": str(input_path)}
  if hparams.get("resolution") is not None and hparams.get("sequence_length") is not None:
    config["data"] = {"resolution": int(hparams["resolution"]), "seq_len": int(hparams["sequence_length"])}
  ckpt.save(0, variables, config=config)
  ckpt.close()
  logging.info("wrote %s", output)
  return output


def check_flags() -> dict[str, Any] | None:
  """The flags, checked before torch or JAX start; returns the parsed `--args_json`."""
  if not FLAGS.input or not FLAGS.output:
    raise cli.UsageError("--input and --output are required")
  config_checks.check_file_flag("--input", FLAGS.input)
  config_checks.check_directory_flag("--output", FLAGS.output, must_exist=False)
  output = pathlib.Path(FLAGS.output)
  if output.is_dir() and any(output.iterdir()) and not FLAGS.overwrite:
    raise cli.UsageError(f"--output={output}: already exists and is not empty; pass --overwrite to replace it")
  extra = None
  if FLAGS.args_json:
    try:
      extra = json.loads(FLAGS.args_json)
    except ValueError as e:
      raise cli.UsageError(f"--args_json: not valid JSON ({e})") from None
    if not isinstance(extra, dict):
      raise cli.UsageError("--args_json must be a JSON object")
  checkpoint_io.check_torch_file(FLAGS.input)
  return extra


def main(argv):
  cli.no_extra_args(argv)
  extra = check_flags()
  logging.set_stderrthreshold("info")  # Progress lines on the console.
  out = convert(FLAGS.input, FLAGS.output, FLAGS.kind, FLAGS.overwrite, extra)
  print(f"converted {FLAGS.input} ({FLAGS.kind}) -> {out}")


if __name__ == "__main__":
  cli.run(main)
