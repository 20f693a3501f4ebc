r"""Encodes a dataset once with a trained VQ-VAE into a codes file for the prior (`config.codes_path`).

  python -m videogpt_jax.train.encode_dataset --config=experiments/configs/gpt_bair.py \
      --config.vqvae_workdir=/tmp/vqvae_bair --output=/tmp/bair_codes_train.npz

The file's layout is `codes_file.py`'s. Clips are the split's fixed windows (the first `seq_len` frames), one pass in
file order; training on the fly instead sees a random window per clip and step.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from videogpt_jax import inference, sharding, visualize
from videogpt_jax.data import pipeline
from videogpt_jax.train import codes_file, common, inputs


def encode_split(config: Any, vqvae, vqvae_variables, mesh: jax.sharding.Mesh, *, split: str | None = None,
                 n_cond_frames: int = 0) -> dict[str, np.ndarray]:
  """Codes (and labels / conditioning frames) of every clip of `split` (default `config.data.split`)."""
  it = pipeline.make_eval_iterator(
      inputs.load_builder(config), split=split or config.data.get("split", "train"),
      global_batch_size=int(config.batch_size), sharding=sharding.batch_sharding(mesh),
      seq_len=int(config.data.seq_len), resolution=int(config.data.resolution), n_cond_frames=n_cond_frames)
  encode = jax.jit(lambda v, x: vqvae.apply(v, x, method=type(vqvae).encode_to_indices))
  out: dict[str, list[np.ndarray]] = {}
  for i, batch in enumerate(it):
    keep = sharding.to_host(batch["mask"]).astype(bool)
    out.setdefault("codes", []).append(sharding.to_host(encode(vqvae_variables, batch["video"]))[keep])
    if "label" in batch:
      out.setdefault("label", []).append(sharding.to_host(batch["label"])[keep])
    if n_cond_frames:
      out.setdefault("cond_frames", []).append(visualize.to_uint8(sharding.to_host(batch["cond_frames"])[keep]))
    if i % 50 == 0:
      logging.info("encoded %d / %d batches", i + 1, len(it))
  return {k: np.concatenate(v).astype(np.int32 if k != "cond_frames" else np.uint8) for k, v in out.items()}


def main(argv):
  del argv
  common.initialize_distributed()
  config = flags.FLAGS.config
  mesh = sharding.make_mesh(config)
  vqvae, variables, _ = inference.load_vqvae(config.vqvae_workdir,
                                             None if config.vqvae_step < 0 else config.vqvae_step, mesh=mesh)
  arrays = encode_split(config, vqvae, variables, mesh, split=flags.FLAGS.split,
                        n_cond_frames=int(config.model.get("n_cond_frames", 0)))
  codes_file.save_codes(flags.FLAGS.output, arrays)
  logging.info("wrote %s: %s", flags.FLAGS.output, {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "A gpt_*.py config (its data and vqvae_workdir are used).")
  flags.DEFINE_string("output", None, "Where to write the .npz file.")
  flags.DEFINE_string("split", None, "Split to encode (default: config.data.split).")
  flags.mark_flags_as_required(["config", "output"])
  app.run(main)
