"""The VQ-VAE's non-causal axial attention: the sum of self-attentions along W, H and T.

No mask, no dropout, no position embedding; each axis has its own projections. Activations are `(B, T, H, W, C)`.

`kernel` picks the implementation, with the same parameters: "xla" (einsums; parity with the original), "pallas"
(`axial_kernel`: one fused Pallas kernel per axis, forward and backward, on TPU; the XLA path on other platforms,
so a VQ-VAE trained on TPU evaluates anywhere), "pallas_interpret" (that kernel in the Pallas interpreter, any
platform: the CPU check of the kernel; slow).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from videogpt_jax.models import axial_kernel
from videogpt_jax.models.initializers import torch_uniform

KERNELS = ("xla",) + axial_kernel.KERNELS


def check_kernel(kernel: str) -> None:
  if kernel not in KERNELS:
    raise ValueError(f"attn_kernel must be one of {KERNELS}, got {kernel!r}")


class _DenseKernel(nn.Module):
  """The `kernel` (and `bias`) parameters `nn.DenseGeneral` would declare, same shapes, initialisation and names,
  returned instead of applied (for the fused kernel, which takes the weights)."""
  in_features: int
  features: tuple[int, ...]
  in_axes: int
  kernel_init: nn.initializers.Initializer
  bias_init: nn.initializers.Initializer | None = None

  @nn.compact
  def __call__(self):
    shape = (self.in_features,) + tuple(self.features) if self.in_axes == 1 else tuple(self.features)
    flat = (math.prod(shape[:self.in_axes]), math.prod(shape[self.in_axes:]))

    def kernel_init(rng, shape, dtype=jnp.float32):  # DenseGeneral initialises the flattened matrix
      value = self.kernel_init(rng, flat, dtype)
      if isinstance(value, nn.meta.AxisMetadata):
        return nn.meta.replace_boxed(value, jnp.reshape(value.unbox(), shape))
      return jnp.reshape(value, shape)

    kernel = self.param("kernel", kernel_init, shape, jnp.float32)
    if self.bias_init is None:
      return kernel
    return kernel, self.param("bias", self.bias_init, (shape[-1],), jnp.float32)


class AxisAttention(nn.Module):
  """Multi-head self-attention along one axis of `(B, T, H, W, C)`, batched over the other axes.

  q/k/v projections have no bias (init N(0, 1/C)), the output projection `fc` has one (init N(0, 1/C) as in the
  original with `n_layer=1`). Heads are head-major in the channels (channel = head * d + j), as in the original.

  Attributes:
    n_heads: number of heads; head dim = C / n_heads.
    axis: 1 (T), 2 (H) or 3 (W).
    kernel: "xla", "pallas" or "pallas_interpret" (module docstring).
    platform: the chip the program is for ("pallas" runs the kernel only on "tpu").
  """
  n_heads: int
  axis: int
  kernel: str = "xla"
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x `(B, T, H, W, C)` -> `(B, T, H, W, C)`."""
    c = x.shape[-1]
    if c % self.n_heads:
      raise ValueError(f"channels {c} must be divisible by n_heads={self.n_heads}")
    if self.axis not in (1, 2, 3):
      raise ValueError(f"axis must be 1 (T), 2 (H) or 3 (W), got {self.axis}")
    check_kernel(self.kernel)
    d = c // self.n_heads
    proj_init = nn.with_logical_partitioning(nn.initializers.normal(1.0 / math.sqrt(c)), ("embed", "heads", "kv"))
    out_init = nn.with_logical_partitioning(nn.initializers.normal(1.0 / math.sqrt(c)), ("heads", "kv", "embed"))
    bias_init = nn.with_logical_partitioning(torch_uniform(c), ("embed",))
    if self.kernel == "pallas_interpret" or (self.kernel == "pallas" and self.platform == "tpu"):
      wq, wk, wv = (_DenseKernel(c, (self.n_heads, d), 1, proj_init, name=name)()
                    for name in ("w_qs", "w_ks", "w_vs"))
      wo, bo = _DenseKernel(c, (self.n_heads, d, c), 2, out_init, bias_init, name="fc")()
      return axial_kernel.axis_attention(x, wq, wk, wv, wo, bo, axis=self.axis,
                                         interpret=self.kernel == "pallas_interpret")

    def proj(name):
      return nn.DenseGeneral((self.n_heads, d), use_bias=False, kernel_init=proj_init, name=name)(x)

    q, k, v = proj("w_qs"), proj("w_ks"), proj("w_vs")  # (B, T, H, W, n, d)
    # Put the attended axis next to the heads: (..., L, n, d).
    q, k, v = (jnp.moveaxis(a, self.axis, -3) for a in (q, k, v))
    scores = jnp.einsum("...qnd,...knd->...nqk", q, k) / math.sqrt(d)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("...nqk,...knd->...qnd", probs, v)
    out = jnp.moveaxis(out, -3, self.axis)
    return nn.DenseGeneral(c, axis=(-2, -1), use_bias=True, kernel_init=out_init, bias_init=bias_init,
                           name="fc")(out)


class AxialBlock(nn.Module):
  """`attn_w(x) + attn_h(x) + attn_t(x)`: the original's AxialBlock (no residual; the caller adds it).

  Attributes:
    n_heads: heads per axis (2 in the original VQ-VAE).
    kernel: each axis' implementation (see `AxisAttention`).
    platform: the chip the program is for.
  """
  n_heads: int = 2
  kernel: str = "xla"
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x `(B, T, H, W, C)` -> `(B, T, H, W, C)`."""
    # Summed in the original's order (W, H, T) so float rounding matches.
    attn = dict(kernel=self.kernel, platform=self.platform)
    out = AxisAttention(self.n_heads, axis=3, name="attn_w", **attn)(x)
    out = out + AxisAttention(self.n_heads, axis=2, name="attn_h", **attn)(x)
    return out + AxisAttention(self.n_heads, axis=1, name="attn_t", **attn)(x)
