"""The prior's negative log-likelihood of held-out clips' VQ-VAE codes, in nats and bits per latent token.

Conditioning comes from the clips themselves: their first `n_cond_frames` frames for a frame-conditional prior,
their labels for a class-conditional one. Every clip has the same number of tokens, so per-clip means are averaged.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax import sharding
from videogpt_jax.evaluation import base, metrics


@functools.partial(jax.jit, static_argnums=(0, 2))
def _nats_per_clip(gpt: Any, gpt_variables: Any, vqvae: Any, vqvae_variables: Any, video: jax.Array,
                   cond: Mapping[str, jax.Array]) -> jax.Array:
  codes = vqvae.apply(vqvae_variables, video, method=type(vqvae).encode_to_indices)
  logits = gpt.apply(gpt_variables, codes, cond, deterministic=True)
  ce = metrics.token_cross_entropy(logits, codes)
  return jnp.mean(ce.reshape(ce.shape[0], -1), axis=1)


def evaluate(gpt: base.Model, vqvae: base.Model, batches: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
  """`{"nats_per_dim", "bits_per_dim", "n_videos"}` of the prior over `batches`."""
  (gpt_module, gpt_vars), (vq_module, vq_vars) = gpt, vqvae
  total, n = 0.0, 0
  for batch in batches:
    cond = base.conditioning(gpt_module, batch)
    nats = _nats_per_clip(gpt_module, gpt_vars, vq_module, vq_vars, batch["video"], cond)
    nats = np.asarray(sharding.to_host(nats), np.float64)[base.mask_of(batch)]
    total, n = total + nats.sum(), n + nats.shape[0]
  if n == 0:
    raise ValueError("bits_per_dim: the evaluation data has no clips")
  return {"nats_per_dim": total / n, "bits_per_dim": float(metrics.bits_per_dim(total / n)), "n_videos": n}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluator:
  """Options: `max_batches` (0: the whole split)."""
  max_batches: int = 0
  needs_prior = True

  def run(self, vqvae: base.Model, gpt: base.Model | None, data: base.EvalData, rng: jax.Array) -> base.Result:
    del rng
    n_cond = int(gpt[0].n_cond_frames)
    scalars = evaluate(gpt, vqvae, base.limited(data.batches(n_cond), self.max_batches, "bits_per_dim"))
    return base.Result(scalars={**scalars, "n_cond_frames": n_cond, "class_cond": bool(gpt[0].class_cond_dim)})
