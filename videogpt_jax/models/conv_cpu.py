"""Exact reformulations of the VQ-VAE's 3D convolutions that XLA:CPU runs fast.

XLA:CPU sends 2-D convolutions and dots to a fast library but runs 3-D convolutions far slower, and any
convolution with input dilation (a transposed convolution, or the input-gradient of a strided one) through a
naive loop (see `shared/reference/CPU_CONV_NOTES.md`). Every function here computes the same sums as
`conv_ops.conv3d_direct` / `conv_ops.conv_transpose3d_direct` (float32 summation order aside) out of stride-1
convolutions, dots, reshapes, pads and slices only, whose gradients are again of that kind. Kernels keep the
parameter layout `(kT, kH, kW, C_in, C_out)`; any rearrangement happens inside, so gradients reach the same
parameters.

Building blocks:
- `conv_s1`: a stride-1 3D correlation with explicit (possibly negative) padding, as one 3-D convolution
  (`"3d"`), as a sum over the temporal taps of 2-D convolutions with time folded into the batch (`"fold"`), with
  the temporal taps stacked into channels for one 2-D convolution (`"fold_cat"`), or with all taps stacked into
  channels for one dot (`"im2col"`). A 1x1x1 kernel is always a dot.
- Strided convolution = space-to-depth by the strides (input and kernel), then `conv_s1`.
- Transposed convolution = per-axis sub-pixel decomposition: output phase `r` of an axis with stride `s` is a
  stride-1 correlation of the padded input with the taps `j = r + k - 1 - s*d` of the kernel. Either all phases
  share one kernel (zeros where a phase has no tap) and the result is depth-to-space'd (`"subpixel"`), or each
  phase of the chosen axes is its own convolution (`"phase"`, `"phase_t"`); or a dot to per-tap patches followed
  by an overlap-add (`"col2im"`), best with few output channels.
"""
from __future__ import annotations

import math
from typing import Sequence

import einops
import jax
import jax.numpy as jnp
from jax import lax

CONV_FORMS = ("s2d_3d", "fold", "fold_split", "fold_cat", "im2col")
TRANSPOSE_FORMS = ("subpixel", "phase", "phase_t", "col2im")

_DN2 = ("NHWC", "HWIO", "NHWC")
_DN3 = ("NDHWC", "DHWIO", "NDHWC")
_CORE = {"s2d_3d": "3d", "fold": "fold", "fold_split": "fold", "fold_cat": "fold_cat", "im2col": "im2col",
         "subpixel": "fold", "phase": "fold", "phase_t": "fold"}
# "fold_split" feeds the 2-D convolutions at most this many input channels (unless the layer has more itself).
_SPLIT_CHANNELS = 128


def _same_padding(k: int, s: int) -> tuple[int, int]:
  """One axis of `conv_ops.same_padding` (repeated here: conv_ops imports this module)."""
  total = k - s
  return total - total // 2, total // 2


def _pad_axes(x: jax.Array, pads: dict[int, tuple[int, int]]) -> jax.Array:
  """Zero-pads (positive) or crops (negative) the given axes."""
  config = [(0, 0, 0)] * x.ndim
  for axis, (lo, hi) in pads.items():
    config[axis] = (lo, hi, 0)
  if all(c == (0, 0, 0) for c in config):
    return x
  return lax.pad(x, jnp.zeros((), x.dtype), config)


# ----------------------------------------------------------------------------------------------- stride-1 core


def conv_s1(x: jax.Array, w: jax.Array, pads: Sequence[tuple[int, int]], core: str,
            chunk: int | None = None) -> jax.Array:
  """Stride-1 correlation of `x (B, T, H, W, Ci)` with `w (kT, kH, kW, Ci, Co)` after padding `pads`.

  `pads` are per-axis `(lo, hi)`; negative values crop. `core` is one of "3d", "fold", "fold_cat", "im2col".
  With `chunk`, "fold" also splits the input channels into groups of `chunk` (here a 2-D convolution with ~1000
  input channels ran 2-3x slower per FLOP than one with 128).
  """
  k = w.shape[:3]
  if k == (1, 1, 1):
    x = _pad_axes(x, {1 + i: p for i, p in enumerate(pads)})
    return jnp.einsum("bthwi,io->bthwo", x, w[0, 0, 0], precision=lax.Precision.HIGHEST)
  # Crops and the temporal padding are applied to x; non-negative spatial padding goes to the convolution.
  conv_pads = [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
  pre = {1 + i: (min(lo, 0), min(hi, 0)) for i, (lo, hi) in enumerate(pads)}
  if core == "3d":
    x = _pad_axes(x, pre)
    return lax.conv_general_dilated(x, w, (1, 1, 1), conv_pads, dimension_numbers=_DN3)
  pre[1] = pads[0]
  x = _pad_axes(x, pre)
  hw_pads = conv_pads[1:]
  b, tp = x.shape[:2]
  t_out = tp - k[0] + 1
  taps = [x[:, dt:dt + t_out] for dt in range(k[0])]
  if core == "fold":
    y = None
    ci = x.shape[-1]
    chunk = chunk or ci
    for dt, xs in enumerate(taps):
      xs = einops.rearrange(xs, "b t h w c -> (b t) h w c")
      for c0 in range(0, ci, chunk):
        yt = lax.conv_general_dilated(xs[..., c0:c0 + chunk], w[dt, :, :, c0:c0 + chunk], (1, 1), hw_pads,
                                      dimension_numbers=_DN2)
        y = yt if y is None else y + yt
  elif core == "fold_cat":
    xs = einops.rearrange(jnp.concatenate(taps, axis=-1), "b t h w c -> (b t) h w c")
    wc = einops.rearrange(w, "kt kh kw i o -> kh kw (kt i) o")
    y = lax.conv_general_dilated(xs, wc, (1, 1), hw_pads, dimension_numbers=_DN2)
  elif core == "im2col":
    xt = jnp.concatenate(taps, axis=-1)
    xt = _pad_axes(xt, {2: hw_pads[0], 3: hw_pads[1]})
    h_out = xt.shape[2] - k[1] + 1
    w_out = xt.shape[3] - k[2] + 1
    cols = [xt[:, :, dh:dh + h_out, dw:dw + w_out] for dh in range(k[1]) for dw in range(k[2])]
    wc = einops.rearrange(w, "kt kh kw i o -> (kh kw kt i) o")
    return jnp.einsum("bthwi,io->bthwo", jnp.concatenate(cols, axis=-1), wc, precision=lax.Precision.HIGHEST)
  else:
    raise ValueError(f"unknown conv core {core!r}")
  return einops.rearrange(y, "(b t) h w c -> b t h w c", b=b)


# -------------------------------------------------------------------------------------------------- conv3d


def conv3d(x: jax.Array, kernel: jax.Array, strides: Sequence[int], form: str) -> jax.Array:
  """`conv_ops.conv3d_direct` as space-to-depth by `strides` followed by a stride-1 `conv_s1` (core by `form`)."""
  strides = tuple(strides)
  k = kernel.shape[:3]
  n = x.shape[1:4]
  out = [ni // si for ni, si in zip(n, strides)]
  chunk = max(x.shape[-1], _SPLIT_CHANNELS) if form == "fold_split" else None
  if strides == (1, 1, 1):
    return conv_s1(x, kernel, [_same_padding(ki, 1) for ki in k], _CORE[form], chunk)
  # Block space: `kb` taps of `s` sub-taps; the input spans exactly (out + kb - 1) blocks from the front pad on.
  # Axes with stride 1 keep their padding for the stride-1 convolution (which pads 2-D axes for free).
  kb = [-(-ki // si) for ki, si in zip(k, strides)]
  pads, rest = {}, []
  for i in range(3):
    lo = _same_padding(k[i], strides[i])[0]
    hi = (out[i] + kb[i] - 1) * strides[i] - n[i] - lo
    if strides[i] > 1:
      pads[1 + i] = (lo, hi)
      rest.append((0, 0))
    else:
      rest.append((lo, hi))
  x = _pad_axes(x, pads)
  kernel = _pad_axes(kernel, {i: (0, kb[i] * strides[i] - k[i]) for i in range(3)})
  st, sh, sw = strides
  x = einops.rearrange(x, "b (t p) (h q) (w r) c -> b t h w (p q r c)", p=st, q=sh, r=sw)
  kernel = einops.rearrange(kernel, "(a p) (e q) (f r) i o -> a e f (p q r i) o", p=st, q=sh, r=sw)
  return conv_s1(x, kernel, rest, _CORE[form], chunk)


# --------------------------------------------------------------------------------------- transposed conv3d


def _phase_taps(k: int, s: int) -> tuple[int, list[list[int]]]:
  """Tap count `D` and, per phase `r`, the kernel index for block offset `d` (`k` = none) of one axis."""
  d_max = (s - 1 + k - 1) // s
  table = []
  for r in range(s):
    row = []
    for d in range(d_max + 1):
      j = r + k - 1 - s * d
      row.append(j if 0 <= j < k else k)
    table.append(row)
  return d_max + 1, table


def _subpixel_kernel(kernel: jax.Array, strides: Sequence[int], split: Sequence[bool]):
  """Rearranges `(kT, kH, kW, Ci, Co)` into per-phase stride-1 kernels.

  Returns a list of `(w, offsets, phases)`: for each combination `phases` of the phases of the `split` axes
  (None for the others), a kernel `w (D'T, D'H, D'W, Ci, P*Co)` (P = product of the strides of the non-split
  axes, ordered like einops "(p q r o)") and the block offset of its first tap per axis.
  """
  k = kernel.shape[:3]
  per_axis = []
  for i in range(3):
    _, table = _phase_taps(k[i], strides[i])
    if split[i]:
      # One kernel per phase holding only that phase's valid taps.
      opts = []
      for r in range(strides[i]):
        valid = [dd for dd, j in enumerate(table[r]) if j < k[i]]
        opts.append((r, valid[0], [table[r][dd] for dd in range(valid[0], valid[-1] + 1)]))
      per_axis.append(opts)
    else:
      per_axis.append([(None, 0, table)])
  # Zero row at index k so that "no tap" gathers zeros.
  kp = _pad_axes(kernel, {0: (0, 1), 1: (0, 1), 2: (0, 1)})
  results = []
  for ot in per_axis[0]:
    for oh in per_axis[1]:
      for ow in per_axis[2]:
        w = kp
        for axis, (r, _, table) in enumerate((ot, oh, ow)):
          idx = jnp.asarray(table, jnp.int32)  # (D,) if split, (s, D) otherwise
          w = jnp.take(w, idx.reshape(-1), axis=axis)
          if r is None:
            w = w.reshape(*w.shape[:axis], strides[axis], -1, *w.shape[axis + 1:])
            w = jnp.moveaxis(w, axis, -1)  # phase axis last, in order t, h, w
        # w: (DT, DH, DW, Ci, Co, *phases) -> (DT, DH, DW, Ci, (*phases Co))
        w = jnp.moveaxis(w, 4, -1)
        w = w.reshape(*w.shape[:4], -1)
        results.append((w, (ot[1], oh[1], ow[1]), (ot[0], oh[0], ow[0])))
  return results


def conv_transpose3d(x: jax.Array, kernel: jax.Array, strides: Sequence[int], form: str) -> jax.Array:
  """`conv_ops.conv_transpose3d_direct` out of stride-1 convolutions (`form` in `TRANSPOSE_FORMS`)."""
  strides = tuple(strides)
  if form == "col2im":
    return _conv_transpose_col2im(x, kernel, strides)
  split = {"subpixel": (False,) * 3, "phase": (True,) * 3, "phase_t": (True, False, False)}[form]
  split = tuple(sp and s > 1 for sp, s in zip(split, strides))
  k = kernel.shape[:3]
  n = x.shape[1:4]
  b, co = x.shape[0], kernel.shape[-1]
  pieces = {}
  for w, offsets, phases in _subpixel_kernel(kernel, strides, split):
    # Output block q of a phase reads padded-input blocks q + offset + d, d < taps: crop/pad x to match.
    pads = []
    for i in range(3):
      lo = _same_padding(k[i], strides[i])[0]
      taps = w.shape[i]
      pads.append((lo - offsets[i], n[i] + taps - 1 - (n[i] + lo - offsets[i])))
    y = conv_s1(x, w, pads, _CORE[form])
    # Depth-to-space over the non-split axes.
    sizes = {ax: (strides[i] if not split[i] else 1) for i, ax in enumerate("pqr")}
    y = einops.rearrange(y, "b t h w (p q r o) -> b (t p) (h q) (w r) o", o=co, **sizes)
    pieces[phases] = y
  if not any(split):
    return pieces[(None, None, None)]
  # Interleave the separately computed phases of the split axes.
  keys = sorted(pieces, key=lambda p: tuple(-1 if v is None else v for v in p))
  stacked = jnp.stack([pieces[key] for key in keys], axis=-2)  # (B, T', H', W', n_pieces, Co)
  shape = [strides[i] if split[i] else 1 for i in range(3)]
  stacked = stacked.reshape(*stacked.shape[:4], *shape, co)
  y = einops.rearrange(stacked, "b t h w p q r o -> b (t p) (h q) (w r) o")
  assert y.shape == (b, n[0] * strides[0], n[1] * strides[1], n[2] * strides[2], co), y.shape
  return y


def _conv_transpose_col2im(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
  """One dot from each input voxel to its `kT*kH*kW` output taps, then an overlap-add per axis."""
  k = kernel.shape[:3]
  patches = jnp.einsum("nthwi,abcio->nthwabco", x, kernel, precision=lax.Precision.HIGHEST)
  # patches: (B, T, H, W, kT, kH, kW, Co); each axis pass consumes its tap axis (which sits right after W
  # and the taps of earlier axes are already gone, so it is always axis 4).
  for i in range(3):
    patches = _overlap_add(patches, axis=1 + i, tap_axis=4, k=k[i], s=strides[i])
  return patches


def _overlap_add(p: jax.Array, axis: int, tap_axis: int, k: int, s: int) -> jax.Array:
  """Sums tap `j` of input position `i` into output `(i + lo) * s + j - (k - 1)`; output length `s * n`."""
  n = p.shape[axis]
  lo = _same_padding(k, s)[0]
  m = -(-k // s)
  p = _pad_axes(p, {tap_axis: (0, m * s - k)})
  # Output full-coordinates [k - 1, k - 1 + s*n) live in blocks [u0, u1) of size s.
  u0 = (k - 1) // s
  u1 = (k - 1 + s * n - 1) // s + 1
  out = None
  for a in range(m):
    blk = lax.slice_in_dim(p, a * s, (a + 1) * s, axis=tap_axis)  # (..., s, ...) sub-taps r
    blk = _pad_axes(blk, {axis: (lo + a - u0, u1 - (n + lo + a))})
    out = blk if out is None else out + blk
  # Merge (block u, sub-tap r) -> u * s + r, then crop to the output window.
  out = jnp.moveaxis(out, tap_axis, axis + 1)
  out = out.reshape(*out.shape[:axis], -1, *out.shape[axis + 2:])
  start = (k - 1) - u0 * s
  return lax.slice_in_dim(out, start, start + s * n, axis=axis)


def flops_conv3d(x_shape: Sequence[int], kernel_shape: Sequence[int], strides: Sequence[int]) -> float:
  """Multiply-add FLOPs (x2) of the direct convolution, for rates in the benchmark."""
  out = [n // s for n, s in zip(x_shape[1:4], strides)]
  return 2.0 * x_shape[0] * math.prod(out) * math.prod(kernel_shape)


def flops_conv_transpose3d(x_shape: Sequence[int], kernel_shape: Sequence[int]) -> float:
  return 2.0 * math.prod(x_shape[:4]) * math.prod(kernel_shape)
