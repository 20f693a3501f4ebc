"""Layers of the VQ-VAE's convolution stack: original-padding (transposed) 3D convolutions and PyTorch BatchNorm.

Activations are `(B, T, H, W, C)`. The arithmetic lives in `videogpt_jax.models.conv_ops` (which picks the fastest
exact formulation for the target `platform` behind `impl="auto"`); these modules only own the parameters.
"""
from __future__ import annotations

import math
from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from videogpt_jax.models import conv_ops
from videogpt_jax.models.initializers import torch_uniform

_KERNEL_AXES = ("conv_k", "conv_k", "conv_k", "conv_in", "conv_out")


def _triple(v: int | Sequence[int], name: str) -> tuple[int, int, int]:
  t = (int(v),) * 3 if isinstance(v, int) else tuple(int(a) for a in v)
  if len(t) != 3 or any(a < 1 for a in t):
    raise ValueError(f"{name} must be a positive int or 3 positive ints, got {v!r}")
  return t  # type: ignore[return-value]


class _SamePadConv(nn.Module):
  """Parameters shared by the two original-padding convolutions; subclasses set `transposed`."""
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  use_bias: bool = True
  impl: str = "auto"
  platform: str = "cpu"

  transposed: ClassVar[bool] = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ks = _triple(self.kernel_size, "kernel_size")
    strides = _triple(self.strides, "strides")
    # PyTorch computes a ConvTranspose's fan-in from the weight's dim 1, i.e. the *output* channels.
    fan_in = (self.features if self.transposed else x.shape[-1]) * math.prod(ks)
    kernel = self.param("kernel", nn.with_logical_partitioning(torch_uniform(fan_in), _KERNEL_AXES),
                        (*ks, x.shape[-1], self.features))
    conv = conv_ops.conv_transpose3d if self.transposed else conv_ops.conv3d
    y = conv(x, kernel, strides, impl=self.impl, platform=self.platform)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(torch_uniform(fan_in), ("conv_out",)),
                        (self.features,))
      y = y + bias
    return y


class SamePadConv3D(_SamePadConv):
  """The original's `SamePadConv3d`: pad `k - s` (larger half in front), then a strided 3D convolution.

  `x (B, T, H, W, C_in) -> (B, T/sT, H/sH, W/sW, features)`.

  Attributes:
    features: output channels.
    kernel_size: int or `(kT, kH, kW)`.
    strides: int or `(sT, sH, sW)`.
    use_bias: add a per-channel bias.
    impl: `conv_ops` formulation ("auto" picks the fastest exact one for `platform`).
    platform: the chip the program is for, one of `platforms.PLATFORMS` (resolves `impl="auto"` only).
  """
  transposed: ClassVar[bool] = False


class SamePadConvTranspose3D(_SamePadConv):
  """The original's `SamePadConvTranspose3d`: output is exactly `strides` x the input.

  `x (B, T, H, W, C_in) -> (B, T*sT, H*sH, W*sW, features)`. The kernel is stored `(kT, kH, kW, C_in, C_out)` and
  NOT flipped (`conv_ops.conv_transpose3d` flips it), so a PyTorch `ConvTranspose3d` weight `(C_in, C_out, k...)`
  imports by a transpose alone.

  Attributes: as `SamePadConv3D`.
  """
  transposed: ClassVar[bool] = True


class BatchNorm(nn.Module):
  """PyTorch `BatchNorm3d` semantics over the channels-last axis.

  Flax's `nn.BatchNorm` keeps the *biased* batch variance in its running average; PyTorch normalises with the
  biased variance but accumulates the *unbiased* one (x n/(n-1)). The released checkpoints' running statistics
  were produced that way, so this follows PyTorch. Under `jax.jit` with a batch-sharded input the means are global.

  Attributes:
    momentum: PyTorch convention, `running = (1 - momentum) * running + momentum * batch`.
    epsilon: added to the variance inside the square root.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """x `(B, ..., C)` -> same shape. `train` uses (and, if mutable, updates from) the batch statistics."""
    c = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (c,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (c,))
    ra_mean = self.variable("batch_stats", "mean",
                            nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), None, (c,))
    ra_var = self.variable("batch_stats", "var",
                           nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), None, (c,))
    if train:
      axes = tuple(range(x.ndim - 1))
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axes)
      var = jnp.mean(jnp.square(xf - mean), axes)  # Two-pass: no cancellation for large means.
      n = math.prod(x.shape[:-1])
      if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = self.momentum * mean + (1.0 - self.momentum) * ra_mean.value
        ra_var.value = self.momentum * unbiased + (1.0 - self.momentum) * ra_var.value
    else:
      mean, var = ra_mean.value, ra_var.value
    # PyTorch's CPU kernel folds the affine into one multiply-add; doing the same keeps rounding close.
    alpha = jax.lax.rsqrt(var + self.epsilon) * scale
    beta = bias - mean * alpha
    return (x * alpha + beta).astype(x.dtype)
