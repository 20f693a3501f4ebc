"""The one place that converts tensors between PyTorch and Flax layouts."""
from __future__ import annotations

import numpy as np


def linear(w: np.ndarray) -> np.ndarray:
  """PyTorch Linear weight `(out, in)` -> Flax Dense kernel `(in, out)`."""
  return np.ascontiguousarray(np.asarray(w, np.float32).T)


def conv3d(w: np.ndarray) -> np.ndarray:
  """PyTorch Conv3d weight `(out, in, kT, kH, kW)` -> `(kT, kH, kW, in, out)` (cross-correlation kept)."""
  return np.ascontiguousarray(np.transpose(np.asarray(w, np.float32), (2, 3, 4, 1, 0)))


def conv_transpose3d(w: np.ndarray) -> np.ndarray:
  """PyTorch ConvTranspose3d weight `(in, out, kT, kH, kW)` -> `(kT, kH, kW, in, out)`.

  Not flipped: `videogpt_jax.models.conv_ops.conv_transpose3d` applies the flip itself.
  """
  return np.ascontiguousarray(np.transpose(np.asarray(w, np.float32), (2, 3, 4, 0, 1)))


def video_ncthw_to_nthwc(x: np.ndarray) -> np.ndarray:
  """`(B, C, T, H, W)` -> `(B, T, H, W, C)`."""
  return np.transpose(x, (0, 2, 3, 4, 1))


def video_nthwc_to_ncthw(x: np.ndarray) -> np.ndarray:
  """`(B, T, H, W, C)` -> `(B, C, T, H, W)`."""
  return np.transpose(x, (0, 4, 1, 2, 3))


# Inverses (Flax -> PyTorch), for exporting weights back to the original's state dict.
def linear_to_torch(k: np.ndarray) -> np.ndarray:
  """Flax Dense kernel `(in, out)` -> PyTorch Linear weight `(out, in)`."""
  return np.ascontiguousarray(np.asarray(k, np.float32).T)


def conv3d_to_torch(k: np.ndarray) -> np.ndarray:
  """`(kT, kH, kW, in, out)` -> PyTorch Conv3d weight `(out, in, kT, kH, kW)`."""
  return np.ascontiguousarray(np.transpose(np.asarray(k, np.float32), (4, 3, 0, 1, 2)))


def conv_transpose3d_to_torch(k: np.ndarray) -> np.ndarray:
  """`(kT, kH, kW, in, out)` -> PyTorch ConvTranspose3d weight `(in, out, kT, kH, kW)` (no flip)."""
  return np.ascontiguousarray(np.transpose(np.asarray(k, np.float32), (3, 4, 0, 1, 2)))
