"""Inception Score (Salimans et al. 2016) of generated videos with the UCF-101 C3D, TGAN-v2 protocol.

IS = exp(E_x KL(p(y|x) || p(y))), computed in float64 on each of `splits` consecutive, equal parts of the samples
(part i = `probs[i * n // splits : (i + 1) * n // splits]`); the score is the mean and (population) standard
deviation over the parts. As in TGAN-v2, `eps = 1e-20` is added to the probabilities before taking logs.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax.evaluation import c3d as c3d_lib


def inception_score(probs: np.ndarray, splits: int = 10, eps: float = 1e-20) -> tuple[float, float]:
  """Class probabilities `(N, K)` -> `(mean, std)` of the Inception Score over `splits` parts."""
  p = np.asarray(probs, np.float64)
  if p.ndim != 2:
    raise ValueError(f"probs must be (N, n_classes), got shape {p.shape}")
  n = p.shape[0]
  if splits < 1 or n < splits:
    raise ValueError(f"need at least one sample per split: {n} samples, splits={splits}")
  scores = []
  for i in range(splits):
    part = p[i * n // splits:(i + 1) * n // splits] + eps
    kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
    scores.append(np.exp(kl.sum(axis=1).mean()))
  return float(np.mean(scores)), float(np.std(scores))


@functools.partial(jax.jit, static_argnums=0)
def _probs(module: c3d_lib.C3D, variables: dict, mean: jax.Array, videos: jax.Array) -> jax.Array:
  return jax.nn.softmax(module.apply(variables, c3d_lib.preprocess(videos, mean)), axis=-1)


def c3d_probs(videos: np.ndarray, module: c3d_lib.C3D, variables: dict, mean: jax.Array,
              batch_size: int = 32) -> np.ndarray:
  """Videos `(N, 16, H, W, 3)` in [-1, 1] -> C3D class probabilities `(N, n_classes)` float64, in jitted batches."""
  videos = np.asarray(videos, np.float32)
  n, out = videos.shape[0], []
  for start in range(0, n, batch_size):
    chunk = videos[start:start + batch_size]
    m = chunk.shape[0]
    if m < batch_size:  # pad so that one shape is compiled
      chunk = np.concatenate([chunk, np.zeros((batch_size - m, *chunk.shape[1:]), chunk.dtype)])
    out.append(np.asarray(_probs(module, variables, jnp.asarray(mean), chunk), np.float64)[:m])
  return np.concatenate(out)


def compute_inception_score(videos: np.ndarray, module: c3d_lib.C3D, variables: dict, mean: jax.Array, *,
                            splits: int = 10, batch_size: int = 32) -> tuple[float, float]:
  """IS `(mean, std)` of videos `(N, 16, H, W, 3)` in [-1, 1] under the C3D (`c3d.load_c3d`)."""
  return inception_score(c3d_probs(videos, module, variables, mean, batch_size), splits)
