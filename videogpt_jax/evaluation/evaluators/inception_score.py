"""UCF-101 Inception Score of the prior's samples with the TGAN-v2 C3D (16-frame clips, `splits` parts).

A class-conditional prior gets labels drawn uniformly (TGAN-v2); a frame-conditional one the first frames of the
split's clips, in order, cycling; an unconditional one nothing. The C3D weights and mean clip are not shipped (see
`videogpt_jax/evaluation/c3d.py` for where to get them).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import jax
import numpy as np
from absl import logging

from videogpt_jax.evaluation import base
from videogpt_jax.evaluation import c3d as c3d_lib
from videogpt_jax.evaluation import inception_score as is_lib
from videogpt_jax.models import conditioning as cond_lib


def evaluate(sample_fn: Callable[[jax.Array, int], np.ndarray], n_samples: int, c3d: tuple, *, rng: jax.Array,
             sample_batch_size: int = 32, splits: int = 10, c3d_batch_size: int = 32) -> dict[str, float]:
  """IS of `n_samples` videos from `sample_fn(fold_in(rng, b), n)` (`(n, 16, H, W, 3)` in [-0.5, 0.5]) under
  `c3d = (module, variables, mean)` from `c3d.load_c3d`."""
  module, variables, mean = c3d
  probs = []
  for b, start in enumerate(range(0, n_samples, sample_batch_size)):
    n = min(sample_batch_size, n_samples - start)
    videos = np.asarray(sample_fn(jax.random.fold_in(rng, b), n), np.float32)
    if videos.shape[0] != n:
      raise ValueError(f"sample_fn returned {videos.shape[0]} videos, asked for {n}")
    probs.append(is_lib.c3d_probs(videos * 2.0, module, variables, mean, c3d_batch_size))
    logging.info("inception_score: %d/%d samples", start + n, n_samples)
  mean_is, std_is = is_lib.inception_score(np.concatenate(probs), splits)
  return {"is": mean_is, "is_std": std_is, "n_samples": n_samples}


def _cycle(data: base.EvalData, n_cond_frames: int) -> Iterator[dict[str, np.ndarray]]:
  """The split's valid clips one at a time, over and over."""
  while True:
    empty = True
    for batch in data.batches(n_cond_frames):
      rows = base.valid_rows(batch)
      for i in range(rows["video"].shape[0]):
        empty = False
        yield {k: v[i] for k, v in rows.items()}
    if empty:
      raise ValueError("inception_score: the split has no clips to condition samples on")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluator:
  """Options: `c3d_weights`, `c3d_mean` (required), `num_samples`, `splits`, `c3d_batch_size`, sampling
  `temperature` / `top_k` / `top_p`."""
  c3d_weights: str | None = None
  c3d_mean: str | None = None
  num_samples: int = 10_000
  splits: int = 10
  c3d_batch_size: int = 32
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None
  needs_prior = True

  def __post_init__(self):
    if not self.c3d_weights or not self.c3d_mean:
      raise ValueError("inception_score needs c3d_weights (conv3d_deepnetA_ucf.npz) and c3d_mean (mean2.npz); "
                       "see videogpt_jax/evaluation/c3d.py for where to get them")
    if self.num_samples < self.splits:
      raise ValueError(f"inception_score: num_samples={self.num_samples} must be at least splits={self.splits}")

  def run(self, vqvae: base.Model, gpt: base.Model | None, data: base.EvalData, rng: jax.Array) -> base.Result:
    gpt_module = gpt[0]
    seq_len = int(data.info.get("seq_len", c3d_lib.N_FRAMES))
    if seq_len != c3d_lib.N_FRAMES:
      raise ValueError(f"the Inception Score's C3D takes {c3d_lib.N_FRAMES}-frame clips; the prior's config has "
                       f"data.seq_len={seq_len}")
    c3d = c3d_lib.load_c3d(self.c3d_weights, self.c3d_mean)
    stream = _cycle(data, int(gpt_module.n_cond_frames)) if gpt_module.n_cond_frames else None
    sampler = base.Sampler(gpt, vqvae, data.batch_size, data.sharding, self.temperature, self.top_k, self.top_p)

    def sample_fn(key: jax.Array, n: int) -> np.ndarray:
      frames = label = None
      if stream is not None:
        rows = [next(stream) for _ in range(n)]
        frames = np.stack([r["cond_frames"] if "cond_frames" in r else r["video"][:gpt_module.n_cond_frames]
                           for r in rows])
      if gpt_module.class_cond_dim:  # TGAN-v2: labels drawn uniformly
        label = np.asarray(jax.random.randint(jax.random.fold_in(key, -1), (n,), 0, gpt_module.class_cond_dim))
      return sampler(key, n, cond_lib.make_cond(frames=frames, label=label))

    scalars = evaluate(sample_fn, self.num_samples, c3d, rng=rng, sample_batch_size=data.batch_size,
                       splits=self.splits, c3d_batch_size=self.c3d_batch_size)
    return base.Result(scalars={**scalars, "splits": self.splits})
