r"""Encodes a dataset once with a trained VQ-VAE into an array file, and iterates over such a file for the prior.

  python -m videogpt_jax.train.encode_dataset --config=experiments/configs/gpt_bair.py \
      --config.vqvae_workdir=/tmp/vqvae_bair --output=/tmp/bair_codes_train.npz

The file (`.npz`) holds `codes (N, t, h, w)` int32, plus `label (N,)` int32 when the dataset has labels and
`cond_frames (N, n_cond_frames, H, W, 3)` uint8 for a frame-conditional prior (exact: the pipeline's frames are
uint8 / 255 - 0.5). Clips are the split's fixed windows (the first `seq_len` frames), one pass in file order;
training on the fly instead sees a random window per clip and step.

`CodesIterator` replays such a file as global batches: epoch `e` is a permutation seeded by `(seed, e)`, each
process takes its slice of every global batch, so the batches are the same for any number of processes and a
resumed run continues exactly (`state()`/`restore()`).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from videogpt_jax import sharding


def _to_uint8(frames: np.ndarray) -> np.ndarray:
  return np.round((np.asarray(frames, np.float32) + 0.5) * 255.0).clip(0, 255).astype(np.uint8)


def encode_split(config: Any, vqvae, vqvae_variables, mesh: jax.sharding.Mesh, *, split: str | None = None,
                 n_cond_frames: int = 0) -> dict[str, np.ndarray]:
  """Codes (and labels / conditioning frames) of every clip of `split` (default `config.data.split`)."""
  from videogpt_jax.data import pipeline
  from videogpt_jax.train import common
  it = pipeline.make_eval_iterator(
      common.load_builder(config), split=split or config.data.get("split", "train"),
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
      out.setdefault("cond_frames", []).append(_to_uint8(sharding.to_host(batch["cond_frames"])[keep]))
    if i % 50 == 0:
      logging.info("encoded %d / %d batches", i + 1, len(it))
  return {k: np.concatenate(v).astype(np.int32 if k != "cond_frames" else np.uint8) for k, v in out.items()}


def save_codes(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
  """Writes the arrays (process 0 only)."""
  if jax.process_index() == 0:
    tmp = f"{os.fspath(path)}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


class CodesIterator:
  """Global batches from a codes file; see the module docstring. Yields `codes`, and `label`/`cond_frames`."""

  def __init__(self, path: str | os.PathLike, *, global_batch_size: int, mesh: jax.sharding.Mesh, seed: int,
               start_step: int = 0):
    if not os.path.exists(path):
      raise FileNotFoundError(f"codes file {path} does not exist; write it with "
                              "`python -m videogpt_jax.train.encode_dataset` (see its docstring)")
    with np.load(path) as z:
      self.arrays = {k: z[k] for k in z.files}
    self.path, self.seed, self.global_batch_size = os.fspath(path), int(seed), int(global_batch_size)
    self.local_batch_size = sharding.batch_size_per_process(self.global_batch_size, mesh)
    self.sharding = sharding.batch_sharding(mesh)
    self.num_examples = len(self.arrays["codes"])
    self.steps_per_epoch = self.num_examples // self.global_batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f"{path} has {self.num_examples} clips, fewer than batch_size={global_batch_size}")
    self._step = int(start_step)

  def __iter__(self) -> CodesIterator:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    epoch, within = divmod(self._step, self.steps_per_epoch)
    order = np.random.default_rng((self.seed, epoch)).permutation(self.num_examples)
    rows = order[within * self.global_batch_size:(within + 1) * self.global_batch_size]
    start = jax.process_index() * self.local_batch_size
    rows = np.sort(rows[start:start + self.local_batch_size])
    self._step += 1
    batch = {}
    for k, v in self.arrays.items():
      x = v[rows]
      if k == "cond_frames":
        x = x.astype(np.float32) / 255.0 - 0.5
      batch[k] = jax.make_array_from_process_local_data(self.sharding, x)
    return batch

  def state(self) -> dict[str, Any]:
    return {"step": self._step, "seed": self.seed, "global_batch_size": self.global_batch_size,
            "num_examples": self.num_examples}

  def restore(self, state: dict[str, Any]) -> CodesIterator:
    for key in ("seed", "global_batch_size", "num_examples"):
      if key in state and state[key] != self.state()[key]:
        raise ValueError(f"iterator state has {key}={state[key]!r} but {self.path} gives {self.state()[key]!r}; "
                         "resuming would change the data order")
    self._step = int(state["step"])
    return self


def main(argv):
  del argv
  from absl import flags
  from videogpt_jax.train import common, load
  flags_ = flags.FLAGS
  common.initialize_distributed()
  config = flags_.config
  mesh = sharding.make_mesh(config)
  vqvae, variables, _ = load.load_vqvae(config.vqvae_workdir, None if config.vqvae_step < 0 else config.vqvae_step,
                                        mesh=mesh)
  arrays = encode_split(config, vqvae, variables, mesh, split=flags_.split,
                        n_cond_frames=int(config.model.get("n_cond_frames", 0)))
  save_codes(flags_.output, arrays)
  logging.info("wrote %s: %s", flags_.output, {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "A gpt_*.py config (its data and vqvae_workdir are used).")
  flags.DEFINE_string("output", None, "Where to write the .npz file.")
  flags.DEFINE_string("split", None, "Split to encode (default: config.data.split).")
  flags.mark_flags_as_required(["config", "output"])
  app.run(main)
