"""The prior's negative log-likelihood of held-out clips' VQ-VAE codes, in nats and bits per latent token.

Conditioning comes from the clips themselves: their first `n_cond_frames` frames for a frame-conditional prior,
their labels for a class-conditional one. Every clip has the same number of tokens, so per-clip means are averaged.

`bits_per_latent_frame` splits the figure by latent time step (its mean is `bits_per_dim`): for a frame-conditional
prior the first latent frame is predicted from the conditioning frames alone, through the frame encoder and
cross-attention, the later ones also from the codes before them, so the split says which path a prior has learnt.
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
def _nats_per_latent_frame(gpt: Any, gpt_variables: Any, vqvae: Any, vqvae_variables: Any, video: jax.Array,
                           cond: Mapping[str, jax.Array]) -> jax.Array:
  codes = vqvae.apply(vqvae_variables, video, method=type(vqvae).encode_to_indices)
  logits = gpt.apply(gpt_variables, codes, cond, deterministic=True)
  ce = metrics.token_cross_entropy(logits, codes)  # (B, t, h, w) -> mean per clip and latent frame (B, t)
  return jnp.mean(ce.reshape(*ce.shape[:2], -1), axis=2)


def evaluate(gpt: base.Model, vqvae: base.Model, batches: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
  """`{"nats_per_dim", "bits_per_dim", "bits_per_latent_frame", "n_videos"}` of the prior over `batches`.

  `bits_per_latent_frame` is a list, one mean per latent time step.
  """
  (gpt_module, gpt_vars), (vq_module, vq_vars) = gpt, vqvae
  total, n = 0.0, 0  # total: nats per latent frame, summed over clips
  for batch in batches:
    cond = base.conditioning(gpt_module, batch)
    nats = _nats_per_latent_frame(gpt_module, gpt_vars, vq_module, vq_vars, batch["video"], cond)
    nats = np.asarray(sharding.to_host(nats), np.float64)[base.mask_of(batch)]
    total, n = total + nats.sum(axis=0), n + nats.shape[0]
  if n == 0:
    raise ValueError("bits_per_dim: the evaluation data has no clips")
  per_frame = total / n
  return {"nats_per_dim": float(per_frame.mean()), "bits_per_dim": float(metrics.bits_per_dim(per_frame.mean())),
          "bits_per_latent_frame": [float(metrics.bits_per_dim(x)) for x in per_frame], "n_videos": n}


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
