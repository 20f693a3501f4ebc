"""The VQ-VAE's non-causal axial attention: the sum of self-attentions along W, H and T.

No mask, no dropout, no position embedding; each axis has its own projections. Activations are `(B, T, H, W, C)`.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from videogpt_jax.models.initializers import torch_uniform


class AxisAttention(nn.Module):
  """Multi-head self-attention along one axis of `(B, T, H, W, C)`, batched over the other axes.

  q/k/v projections have no bias (init N(0, 1/C)), the output projection `fc` has one (init N(0, 1/C) as in the
  original with `n_layer=1`). Heads are head-major in the channels (channel = head * d + j), as in the original.

  Attributes:
    n_heads: number of heads; head dim = C / n_heads.
    axis: 1 (T), 2 (H) or 3 (W).
  """
  n_heads: int
  axis: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x `(B, T, H, W, C)` -> `(B, T, H, W, C)`."""
    c = x.shape[-1]
    if c % self.n_heads:
      raise ValueError(f"channels {c} must be divisible by n_heads={self.n_heads}")
    if self.axis not in (1, 2, 3):
      raise ValueError(f"axis must be 1 (T), 2 (H) or 3 (W), got {self.axis}")
    d = c // self.n_heads
    proj_init = nn.with_logical_partitioning(nn.initializers.normal(1.0 / math.sqrt(c)), ("embed", "heads", "kv"))

    def proj(name):
      return nn.DenseGeneral((self.n_heads, d), use_bias=False, kernel_init=proj_init, name=name)(x)

    q, k, v = proj("w_qs"), proj("w_ks"), proj("w_vs")  # (B, T, H, W, n, d)
    # Put the attended axis next to the heads: (..., L, n, d).
    q, k, v = (jnp.moveaxis(a, self.axis, -3) for a in (q, k, v))
    scores = jnp.einsum("...qnd,...knd->...nqk", q, k) / math.sqrt(d)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("...nqk,...knd->...qnd", probs, v)
    out = jnp.moveaxis(out, -3, self.axis)
    return nn.DenseGeneral(
        c, axis=(-2, -1), use_bias=True,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(1.0 / math.sqrt(c)),
                                                 ("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(torch_uniform(c), ("embed",)),
        name="fc")(out)


class AxialBlock(nn.Module):
  """`attn_w(x) + attn_h(x) + attn_t(x)`: the original's AxialBlock (no residual; the caller adds it).

  Attributes:
    n_heads: heads per axis (2 in the original VQ-VAE).
  """
  n_heads: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x `(B, T, H, W, C)` -> `(B, T, H, W, C)`."""
    # Summed in the original's order (W, H, T) so float rounding matches.
    out = AxisAttention(self.n_heads, axis=3, name="attn_w")(x)
    out = out + AxisAttention(self.n_heads, axis=2, name="attn_h")(x)
    return out + AxisAttention(self.n_heads, axis=1, name="attn_t")(x)
