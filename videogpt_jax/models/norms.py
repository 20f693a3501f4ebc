"""The GPT prior's LayerNorm, with the original's epsilon placement and optional class conditioning."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax.models.initializers import torch_uniform

_EPS = 1e-5


def normalize(x: jax.Array) -> jax.Array:
  """`(x - mean) * (eps + rsqrt(var))` over the last axis, in float32.

  The original adds the epsilon *after* the rsqrt instead of inside the square root. Released checkpoints were
  trained with it, so it is kept: a feature with near-zero variance is scaled by a large but finite factor.
  """
  x = x.astype(jnp.float32)
  mu = jnp.mean(x, axis=-1, keepdims=True)
  centred = x - mu
  var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  return centred * (_EPS + jax.lax.rsqrt(var))


class LayerNorm(nn.Module):
  """LayerNorm of the GPT prior; class-conditional when `class_cond_dim` is set.

  Unconditional: `x_hat * g + b` with learned `g` (ones) and `b` (zeros). Conditional: `g = 1 + onehot @ w`
  (w initialised to `1/sqrt(class_cond_dim)`) and `b = onehot @ wb` (PyTorch Linear default init), per example.

  Attributes:
    class_cond_dim: number of classes, or None for the unconditional version.
    dtype: dtype of the output (statistics are always computed in float32).
  """
  class_cond_dim: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, onehot: jax.Array | None = None) -> jax.Array:
    """x `(B, ..., C)`, onehot `(B, class_cond_dim)` (required iff conditional) -> `(B, ..., C)`."""
    features = x.shape[-1]
    x_hat = normalize(x)
    if self.class_cond_dim is None:
      g = self.param("g", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (features,))
      b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (features,))
    else:
      if onehot is None:
        raise ValueError("a class-conditional LayerNorm needs the one-hot labels (B, class_cond_dim)")
      if onehot.shape != (x.shape[0], self.class_cond_dim):
        raise ValueError(f"onehot must have shape {(x.shape[0], self.class_cond_dim)}, got {onehot.shape}")
      c = self.class_cond_dim
      bound = 1.0 / np.sqrt(c)
      w = self.param("w", nn.with_logical_partitioning(nn.initializers.constant(bound), (None, "norm")),
                     (c, features))
      wb = self.param("wb", nn.with_logical_partitioning(torch_uniform(c), (None, "norm")), (c, features))
      onehot = onehot.astype(jnp.float32)
      bcast = (x.shape[0],) + (1,) * (x.ndim - 2) + (features,)
      g = 1.0 + jnp.reshape(onehot @ w, bcast)
      b = jnp.reshape(onehot @ wb, bcast)
    return (x_hat * g + b).astype(self.dtype)

