"""Functional 3D convolutions with the original VideoGPT's padding.

Layouts: activations `(B, T, H, W, C)`; kernels `(kT, kH, kW, C_in, C_out)` for both the convolution and the
transposed convolution (a PyTorch `ConvTranspose3d` weight `(C_in, C_out, kT, kH, kW)` is only transposed, not
flipped, on import; the flip is part of the operation here).

The original's "same" padding puts the larger half of `k - s` on the *left* (k=4, s=1 -> (2, 1)); JAX's "SAME"
puts it on the right, so padding is always explicit.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from videogpt_jax.models import conv_cpu, platforms

_DIMS = ("NDHWC", "DHWIO", "NDHWC")


def same_padding(kernel_size: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
  """Per-axis `(front, back)` padding of the original's SamePadConv3d: `k - s` in total, front gets the ceil."""
  pads = []
  for k, s in zip(kernel_size, strides):
    total = k - s
    pads.append((total - total // 2, total // 2))
  return pads


def conv3d_direct(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
  """`SamePadConv3d` without bias, as one XLA convolution. x `(B, T, H, W, Ci)` -> `(B, T', H', W', Co)`."""
  strides = tuple(strides)
  return lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding=same_padding(kernel.shape[:3], strides),
      dimension_numbers=_DIMS)


def conv_transpose3d_direct(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
  """`SamePadConvTranspose3d` without bias: output is exactly `strides` x the input.

  The original pads the input by the same-padding of `(k, s)` and applies `ConvTranspose3d(padding=k-1)`, which
  is a correlation of the `s`-dilated padded input with the spatially flipped kernel and no further padding.
  """
  strides = tuple(strides)
  pads = same_padding(kernel.shape[:3], strides)
  x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
  flipped = kernel[::-1, ::-1, ::-1]
  return lax.conv_general_dilated(
      x, flipped, window_strides=(1, 1, 1), padding=[(0, 0)] * 3, lhs_dilation=strides,
      dimension_numbers=_DIMS)


# ------------------------------------------------------------------------------------------------ dispatch
# `impl="direct"` is one XLA convolution (right on TPU/GPU); the other names are the exact reformulations of
# `conv_cpu` that XLA:CPU runs 30-300x faster; "auto" picks per layer for the target `platform` (see `auto_conv`
# / `auto_transpose`). The platform is an argument, not the tracing process's backend, so a program lowered on a
# CPU host for a TPU keeps the TPU's forms.
CONV_IMPLS = ("auto", "direct", *conv_cpu.CONV_FORMS)
TRANSPOSE_IMPLS = ("auto", "direct", *conv_cpu.TRANSPOSE_FORMS)
IMPLS = tuple(dict.fromkeys(CONV_IMPLS + TRANSPOSE_IMPLS))


# The per-layer choice below was measured with `benchmarks/conv_layers.py` (`benchmarks/results/conv_layers.json`:
# forward+backward, batch 4, 128 hiddens, on 2 CPU cores shared with other jobs, so read ratios):
# - every convolution: "fold_split" (space-to-depth by the strides, then 2-D convolutions over the temporal taps
#   with time folded into the batch, input channels fed in groups of <= 128; for stride 1 or few input channels
#   it is plain "fold"). L2 128->128 s2: 1.35 s vs fold 2.16 s, fold_cat 2.07 s, s2d_3d 1.90 s, direct 14.8 s.
#   Elsewhere fold / fold_split / fold_cat are within noise of each other and 2-3x ahead of the 3-D conv forms:
#   L1 3->128 s2 0.27-0.33 s vs direct 80 s; L3 k3 0.29 s vs direct 0.60 s; M1 s(2,1,1) 2.5-2.7 s vs 18.4 s.
# - transposed convolution: "col2im" for few output channels (L6 128->3: 0.43 s vs phase_t 0.63 s, phase 1.05 s,
#   direct 76 s), otherwise "phase" (L5 128->128: 0.95 s vs col2im 1.68 s, subpixel 2.98 s, direct 31.6 s;
#   M2 s(2,1,1): 2.6 s vs col2im 8.6 s, direct 63.5 s).
_COL2IM_MAX_OUT_CHANNELS = 8


def auto_conv(platform: str, x_shape, kernel_shape, strides) -> str:
  """Measured-fastest exact form of a convolution on `platform` (one of `platforms.PLATFORMS`)."""
  del x_shape, kernel_shape, strides  # one form wins every measured CPU shape
  if platforms.check(platform) != "cpu":
    return "direct"
  return "fold_split"


def auto_transpose(platform: str, x_shape, kernel_shape, strides) -> str:
  """Measured-fastest exact form of a transposed convolution on `platform` (one of `platforms.PLATFORMS`)."""
  del x_shape, strides
  if platforms.check(platform) != "cpu":
    return "direct"
  return "col2im" if kernel_shape[-1] <= _COL2IM_MAX_OUT_CHANNELS else "phase"


def _check(x: jax.Array, kernel: jax.Array, strides: Sequence[int], impl: str, allowed: Sequence[str],
           op: str) -> tuple[int, ...]:
  if impl not in allowed:
    raise ValueError(f"conv impl for {op} must be one of {tuple(allowed)}, got {impl!r}")
  if x.ndim != 5 or kernel.ndim != 5:
    raise ValueError(f"{op}: expected x (B, T, H, W, C) and kernel (kT, kH, kW, C_in, C_out), got shapes "
                     f"{x.shape} and {kernel.shape}")
  if x.shape[-1] != kernel.shape[3]:
    raise ValueError(f"{op}: input has {x.shape[-1]} channels but the kernel expects {kernel.shape[3]}")
  strides = tuple(int(s) for s in strides)
  if len(strides) != 3 or min(strides) < 1:
    raise ValueError(f"{op}: strides must be 3 positive ints, got {strides}")
  return strides


def conv3d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1, 1), impl: str = "auto",
           platform: str = "cpu") -> jax.Array:
  """Original-padding 3D convolution (no bias). x `(B, T, H, W, Ci)`, kernel `(kT, kH, kW, Ci, Co)`.

  All impls compute the same sums as `conv3d_direct`; they differ in speed (and float32 rounding) only.
  `platform` is the chip the program is for; it only resolves `impl="auto"`.
  """
  strides = _check(x, kernel, strides, impl, CONV_IMPLS, "conv3d")
  if impl == "auto":
    impl = auto_conv(platform, x.shape, kernel.shape, strides)
  if impl == "direct" or any(n < s for n, s in zip(x.shape[1:4], strides)):
    return conv3d_direct(x, kernel, strides)
  return conv_cpu.conv3d(x, kernel, strides, impl)


def conv_transpose3d(x: jax.Array, kernel: jax.Array, strides: Sequence[int], impl: str = "auto",
                     platform: str = "cpu") -> jax.Array:
  """Original-padding 3D transposed convolution (no bias): output `(B, sT*T, sH*H, sW*W, Co)`.

  All impls compute the same sums as `conv_transpose3d_direct`; they differ in speed (and rounding) only.
  `platform` is the chip the program is for; it only resolves `impl="auto"`.
  """
  strides = _check(x, kernel, strides, impl, TRANSPOSE_IMPLS, "conv_transpose3d")
  if impl == "auto":
    impl = auto_transpose(platform, x.shape, kernel.shape, strides)
  if impl == "direct":
    return conv_transpose3d_direct(x, kernel, strides)
  return conv_cpu.conv_transpose3d(x, kernel, strides, impl)
