"""Replays a file of pre-encoded codes (written by `videogpt_jax.train.encode_dataset`) as the prior's batches.

The file (`.npz`) holds `codes (N, t, h, w)` int32, plus `label (N,)` int32 when the dataset has labels and
`cond_frames (N, n_cond_frames, H, W, 3)` uint8 for a frame-conditional prior (exact: the pipeline's frames are
uint8 / 255 - 0.5).

`CodesIterator` yields global batches: epoch `e` is a permutation seeded by `(seed, e)`, each process takes its
slice of every global batch, so the batches are the same for any number of processes and a resumed run continues
exactly (`state()`/`restore()`).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from videogpt_jax import sharding


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
