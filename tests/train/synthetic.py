"""Test-only input: deterministic synthetic clips (a bright square moving across a dark frame), as global batches.

Batch `i` depends only on `(seed, i)`, and each process takes its slice of the same global batch, so runs on any
mesh or number of processes see identical data. `state()`/`restore()` follow the real pipeline's contract.
"""
from __future__ import annotations

import jax
import numpy as np

from videogpt_jax import sharding


def clips(seed: int, step: int, batch: int, seq_len: int, res: int) -> np.ndarray:
  rng = np.random.default_rng((seed, step))
  video = np.full((batch, seq_len, res, res, 3), -0.5, np.float32)
  size = max(res // 4, 2)
  for b in range(batch):
    y, x = rng.integers(0, res - size, size=2)
    dy, dx = rng.choice([-1, 1], size=2)
    color = rng.uniform(0.0, 0.5, size=3)
    for t in range(seq_len):
      yy, xx = np.clip(y + dy * t, 0, res - size), np.clip(x + dx * t, 0, res - size)
      video[b, t, yy:yy + size, xx:xx + size] = color
  return video


class SyntheticIterator:

  def __init__(self, config, *, seed: int = 0, poison_at: int | None = None, labels: int = 0,
               n_cond_frames: int = 0):
    self.mesh = sharding.make_mesh(config)
    self.batch = int(config.batch_size)
    self.seq_len, self.res = int(config.data.seq_len), int(config.data.resolution)
    self.seed, self.poison_at, self.labels, self.n_cond = seed, poison_at, labels, n_cond_frames
    self.local = sharding.batch_size_per_process(self.batch, self.mesh)
    self._step = 0

  def __iter__(self):
    return self

  def __next__(self):
    video = clips(self.seed, self._step, self.batch, self.seq_len, self.res)
    self._step += 1
    if self.poison_at is not None and self._step == self.poison_at:
      video = video * np.nan
    out = {"video": video}
    if self.labels:
      out["label"] = (np.arange(self.batch) % self.labels).astype(np.int32)
    if self.n_cond:
      out["cond_frames"] = video[:, :self.n_cond]
    start = jax.process_index() * self.local
    batch_sharding = sharding.batch_sharding(self.mesh)
    return {k: jax.make_array_from_process_local_data(batch_sharding, v[start:start + self.local])
            for k, v in out.items()}

  def state(self):
    return {"step": self._step, "seed": self.seed}

  def restore(self, state):
    assert state["seed"] == self.seed, state
    self._step = int(state["step"])
    return self
