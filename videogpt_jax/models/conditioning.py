"""Conditioning of the GPT prior: the one mapping of its conditioning inputs, and the frame encoder.

The prior takes its conditioning as one mapping built by `make_cond` (or `from_batch`, from a data batch):
`{"frames": (B, n_cond_frames, H, W, 3) float in [-0.5, 0.5], "label": (B,) int}`, holding only the inputs the
prior uses (`{}` for an unconditional prior). `GPT.__call__`, `GPT.prepare_decode`, the sampler and the
evaluators all take that mapping.

The frame encoder is the original's 3D ResNet-34 with channel LayerNorm. Input: the first `n_cond_frames` frames
`(B, n, H, W, 3)` in [-0.5, 0.5]. Output: `(B, n, H/4, W/4, out_dim)`. Differences from a textbook ResNet that the
original has and that checkpoints depend on:
  - every norm is a LayerNorm over channels (eps 1e-5 inside the square root), not BatchNorm;
  - convolutions use symmetric zero padding 1 (k=3) or 0 (k=1);
  - a residual block is `relu(relu(LN(conv2(relu(LN(conv1 x))))) + shortcut)`: a ReLU *before* the add too;
  - the first block of every group has a projection shortcut `LN(conv1x1(x, stride))`, even at stride 1.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from videogpt_jax.models import conv_ops
from videogpt_jax.models.initializers import torch_uniform

_DIMS = ("NDHWC", "DHWIO", "NDHWC")
_CONV_NAMES = ("conv_k", "conv_k", "conv_k", "conv_in", "conv_out")

COND_KEYS = ("frames", "label")
Cond = Mapping[str, jax.Array]


def make_cond(frames: Any = None, label: Any = None) -> dict[str, Any]:
  """The prior's conditioning inputs as one mapping: the only place they are put together.

  Args:
    frames: `(B, n_cond_frames, H, W, 3)` float in [-0.5, 0.5], for a frame-conditional prior.
    label: `(B,)` int class labels, for a class-conditional prior.

  Returns:
    `{"frames": frames, "label": label}` without the entries that are None (arrays are kept as given).
  """
  return {k: v for k, v in (("frames", frames), ("label", label)) if v is not None}


def from_batch(batch: Mapping[str, Any], n_cond_frames: int, class_cond: bool) -> dict[str, Any]:
  """The conditioning of a prior with `n_cond_frames` frames / class labels, from a data batch.

  Frames are the batch's `cond_frames`, or else the first `n_cond_frames` frames of its `video`; the label is
  `batch["label"]`. Inputs the prior does not use are left out.
  """
  frames = None
  if n_cond_frames:
    frames = batch["cond_frames"] if "cond_frames" in batch else batch["video"][:, :n_cond_frames]
  if class_cond and "label" not in batch:
    raise ValueError("the prior is class-conditional but the batch has no 'label'")
  return make_cond(frames=frames, label=batch["label"] if class_cond else None)


def as_cond(cond: Cond | None, cond_frames: Any = None, labels: Any = None) -> dict[str, Any]:
  """Validates `cond`; the keyword form `cond_frames=` / `labels=` (kept for callers of the original's API) goes
  through `make_cond` as well. Giving both forms is an error."""
  if cond_frames is not None or labels is not None:
    if cond:
      raise ValueError("give the conditioning either as `cond` (conditioning.make_cond) or as cond_frames=/labels=,"
                       " not both")
    return make_cond(frames=cond_frames, label=labels)
  if cond is None:
    return {}
  if not isinstance(cond, Mapping):
    raise TypeError(f"cond must be a mapping from conditioning.make_cond with keys {COND_KEYS}, got "
                    f"{type(cond).__name__}")
  unknown = sorted(set(cond) - set(COND_KEYS))
  if unknown:
    raise ValueError(f"cond has unknown keys {unknown}; the prior's conditioning keys are {COND_KEYS}")
  return dict(cond)


class Conv3d(nn.Module):
  """Bias-free 3D convolution with the PyTorch `padding=(k-1)//2` of the original ResNet.

  Attributes:
    features: output channels.
    kernel_size: cubic kernel extent (1 or 3).
    strides: per-axis strides `(sT, sH, sW)`.
    dtype: compute dtype.
    platform: the chip the program is for; picks `conv_ops`' formulation.
  """
  features: int
  kernel_size: int
  strides: tuple[int, int, int] = (1, 1, 1)
  dtype: Any = jnp.float32
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    init = torch_uniform(x.shape[-1] * k ** 3)
    kernel = self.param("kernel", nn.with_logical_partitioning(init, _CONV_NAMES),
                        (k, k, k, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    strides = tuple(self.strides)
    if k == 1:
      # A strided 1x1x1 convolution reads every s-th position: slicing first is exact and avoids XLA:CPU's slow
      # gradient of strided convolutions.
      return conv_ops.conv3d(x[:, ::strides[0], ::strides[1], ::strides[2]], kernel, (1, 1, 1),
                             platform=self.platform)
    if x.shape[1] == 1 and strides[0] == 1:
      # A single conditioning frame (BAIR's setting): the outer temporal taps only ever see zero padding, so
      # the exact result uses the centre tap alone, a third of the work.
      kernel = kernel[k // 2:k // 2 + 1]
    if all(s == 1 or n % 2 == 0 for s, n in zip(strides, x.shape[1:4])):
      # PyTorch pads (k-1)/2 on both sides. `conv_ops` pads k-s with the larger half in front: the same at stride
      # 1, and at stride 2 on even sizes the one pixel of back padding it drops is never read. `conv_ops` picks
      # the fastest exact formulation for the platform (the direct strided conv's gradient is slow on XLA:CPU).
      return conv_ops.conv3d(x, kernel, strides, platform=self.platform)
    k_t = kernel.shape[0]
    pad = [((k_t - 1) // 2,) * 2, ((k - 1) // 2,) * 2, ((k - 1) // 2,) * 2]
    return lax.conv_general_dilated(x, kernel, window_strides=strides, padding=pad, dimension_numbers=_DIMS)


class NormReLU(nn.Module):
  """Channel LayerNorm (float32 statistics, PyTorch eps 1e-5) then optional ReLU."""
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=jnp.float32, param_dtype=jnp.float32,
                     scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                     name="norm")(x.astype(jnp.float32))
    if self.relu:
      y = nn.relu(y)
    return y.astype(self.dtype)


class ResidualBlock(nn.Module):
  """Basic 3x3x3 residual block (see the module docstring for the original's quirks)."""
  filters: int
  strides: tuple[int, int, int] = (1, 1, 1)
  use_projection: bool = False
  dtype: Any = jnp.float32
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    if self.use_projection:
      shortcut = Conv3d(self.filters, 1, self.strides, self.dtype, self.platform, name="proj_conv")(x)
      shortcut = NormReLU(relu=False, dtype=self.dtype, name="proj_norm")(shortcut)
    x = Conv3d(self.filters, 3, self.strides, self.dtype, self.platform, name="conv1")(x)
    x = NormReLU(dtype=self.dtype, name="norm1")(x)
    x = Conv3d(self.filters, 3, (1, 1, 1), self.dtype, self.platform, name="conv2")(x)
    x = NormReLU(dtype=self.dtype, name="norm2")(x)
    return nn.relu(x + shortcut)


class BlockGroup(nn.Module):
  """`blocks` residual blocks; the first one strides and projects."""
  filters: int
  blocks: int
  strides: tuple[int, int, int]
  dtype: Any = jnp.float32
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ResidualBlock(self.filters, self.strides, use_projection=True, dtype=self.dtype, platform=self.platform,
                      name="start_block")(x)
    for i in range(1, self.blocks):
      x = ResidualBlock(self.filters, dtype=self.dtype, platform=self.platform, name=f"blocks_{i - 1}")(x)
    return x


def group_strides(stride: Sequence[int], n_groups: int = 3) -> list[tuple[int, int, int]]:
  """Strides of groups 2..4 in the original's schedule: halve every axis that still needs downsampling."""
  remaining = []
  for s in stride:
    if s < 1 or 2 ** int(round(math.log2(s))) != s:
      raise ValueError(f"frame encoder stride must be powers of 2 per axis, got {tuple(stride)}")
    remaining.append(int(round(math.log2(s))))
  out = []
  for _ in range(n_groups):
    out.append(tuple(2 if r > 0 else 1 for r in remaining))
    remaining = [r - 1 for r in remaining]
  if any(r > 0 for r in remaining):
    raise ValueError(f"frame encoder stride {tuple(stride)} needs more than {n_groups} halvings on some axis")
  return out


class FrameEncoder(nn.Module):
  """ResNet-34 3D (blocks [3, 4, 6, 3], widths 64/128/256/out_dim, 3x3x3 stem), channels-last.

  Attributes:
    out_dim: output channels (240 in the original).
    stride: overall downsampling `(sT, sH, sW)` ((1, 4, 4) in the original).
    blocks: residual blocks per group.
    width: channels of the stem and the first group.
    dtype: compute dtype (norm statistics stay float32).
    platform: the chip the program is for (`platforms.PLATFORMS`); picks the convolutions' formulation.
  """
  out_dim: int = 240
  stride: tuple[int, int, int] = (1, 4, 4)
  blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
  width: int = 64
  dtype: Any = jnp.float32
  platform: str = "cpu"

  @nn.compact
  def __call__(self, frames: jax.Array) -> jax.Array:
    """frames `(B, n, H, W, 3)` -> `(B, n / sT, H / sH, W / sW, out_dim)`."""
    if frames.ndim != 5 or frames.shape[-1] != 3:
      raise ValueError(f"cond_frames must be (B, n, H, W, 3), got shape {frames.shape}")
    s2, s3, s4 = group_strides(self.stride)
    x = Conv3d(self.width, 3, (1, 1, 1), self.dtype, self.platform, name="stem_conv")(frames)
    x = NormReLU(dtype=self.dtype, name="stem_norm")(x)
    widths = (self.width, 2 * self.width, 4 * self.width, self.out_dim)
    for i, (w, n, s) in enumerate(zip(widths, self.blocks, ((1, 1, 1), s2, s3, s4))):
      x = BlockGroup(w, n, s, self.dtype, self.platform, name=f"group{i + 1}")(x)
    return x
