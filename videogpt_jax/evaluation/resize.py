"""Separable bilinear resizing written as two small matrix products, matching the frameworks the metrics came from.

The evaluation networks were trained with one framework's resize, and their statistics depend on it:
- VideoGPT's FVD preprocessing uses `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)` without
  antialiasing (source coordinate `(dst + 0.5) * in / out - 0.5`, clamped at 0);
- TGAN-v2's C3D Inception Score uses chainer's `F.resize_images`, whose default is `align_corners=True`
  (source coordinate `dst * (in - 1) / (out - 1)`).
`jax.image.resize` implements neither corner convention exactly for downsampling, so the interpolation weights are
built here as `(out, in)` matrices (numpy, at trace time) and applied with `einsum`.
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp


def bilinear_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """`(out_size, in_size)` float32 matrix `M` such that `M @ signal` is the 1-D bilinear resize of `signal`."""
  if in_size < 1 or out_size < 1:
    raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
  dst = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = dst * scale
  else:
    src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = src - i0
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.arange(out_size), i0), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), i1), frac)
  return m.astype(np.float32)


def resize_hw(x: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
  """Applies row/column interpolation matrices to `(..., H, W, C)`: returns `(..., rows.shape[0], cols.shape[0], C)`."""
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,...hwc->...owc", jnp.asarray(rows), x, precision=hi)
  return jnp.einsum("pw,...owc->...opc", jnp.asarray(cols), x, precision=hi)
