"""Samples of the prior for TensorBoard: `num_samples` videos, conditioned on the split's first clips when the
prior is conditional (those real clips are shown in the row above their samples)."""
from __future__ import annotations

import dataclasses

import jax
from absl import logging

from videogpt_jax.evaluation import base


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluator:
  """Options: `num_samples`, sampling `temperature` / `top_k` / `top_p`."""
  num_samples: int = 8
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None
  needs_prior = True

  def run(self, vqvae: base.Model, gpt: base.Model | None, data: base.EvalData, rng: jax.Array) -> base.Result:
    gpt_module, n = gpt[0], self.num_samples
    real, cond = None, {}
    if gpt_module.n_cond_frames or gpt_module.class_cond_dim:
      clips = base.first_clips(data, n, int(gpt_module.n_cond_frames))
      if not clips or clips["video"].shape[0] < n:
        logging.warning("samples: the split has fewer than %d clips to condition samples on; no samples", n)
        return base.Result()
      real, cond = clips["video"], base.conditioning(gpt_module, clips)
    sampler = base.Sampler(gpt, vqvae, data.batch_size, data.sharding, self.temperature, self.top_k, self.top_p)
    video = sampler(rng, n, cond)
    return base.Result(scalars={"n_samples": n}, videos={"samples": [real, video] if real is not None else video})
