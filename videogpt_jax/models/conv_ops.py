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


# Dispatch. `impl="auto"` picks the fastest exact formulation for the backend; "direct" is one XLA convolution.
IMPLS = ("auto", "direct")


def conv3d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1, 1), impl: str = "auto") -> jax.Array:
  """Original-padding 3D convolution (no bias). See `conv3d_direct`."""
  if impl not in IMPLS:
    raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
  return conv3d_direct(x, kernel, strides)


def conv_transpose3d(x: jax.Array, kernel: jax.Array, strides: Sequence[int], impl: str = "auto") -> jax.Array:
  """Original-padding 3D transposed convolution (no bias). See `conv_transpose3d_direct`."""
  if impl not in IMPLS:
    raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
  return conv_transpose3d_direct(x, kernel, strides)
