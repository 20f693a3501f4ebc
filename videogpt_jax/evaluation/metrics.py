"""Per-video quality metrics and likelihood units: MSE, normalised MSE, PSNR, SSIM, bits/dim.

Videos are `(B, T, H, W, C)` floats; with this codebase's range [-0.5, 0.5] the data range is 1. Every function
returns per-video values `(B,)` (so that padded evaluation batches can be masked) unless it says otherwise.

Normalised MSE: VideoGPT reports VQ-VAE reconstruction quality as the MSE divided by the variance of the data.
Its training loss hard-codes that variance as 0.06 (`vqvae.RECON_LOSS_SCALE`); the `reconstruction` evaluator
divides by the variance measured over the evaluated set (and reports the 0.06 form as `recon_loss`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from videogpt_jax.models import vqvae

LN2 = math.log(2.0)


def mse(x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean squared error per video: `(B, ...)` x2 -> `(B,)`."""
  if x.shape != y.shape:
    raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
  d = jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)
  return jnp.mean(jnp.square(d).reshape(d.shape[0], -1), axis=1)


def normalized_mse(x: jax.Array, recon: jax.Array, data_variance: float = vqvae.RECON_LOSS_SCALE) -> jax.Array:
  """`mse(x, recon) / data_variance` per video."""
  if data_variance <= 0:
    raise ValueError(f"data_variance must be positive, got {data_variance}")
  return mse(x, recon) / data_variance


def psnr(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
  """PSNR in dB per video: `10 log10(data_range^2 / mse)` (inf for identical videos)."""
  return 10.0 * jnp.log10(data_range ** 2 / mse(x, y))


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
  r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-0.5 * (r / sigma) ** 2)
  return (g / g.sum()).astype(np.float32)


def _blur(x: jax.Array, g: np.ndarray) -> jax.Array:
  """Separable 'valid' Gaussian filter over H and W of `(N, H, W, C)`."""
  hi = jax.lax.Precision.HIGHEST
  k = len(g)
  h, w = x.shape[1], x.shape[2]
  rows = np.stack([np.pad(g, (i, h - k - i)) for i in range(h - k + 1)])
  cols = np.stack([np.pad(g, (i, w - k - i)) for i in range(w - k + 1)])
  x = jnp.einsum("oh,nhwc->nowc", rows, x, precision=hi)
  return jnp.einsum("pw,nowc->nopc", cols, x, precision=hi)


def ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> jax.Array:
  """Structural similarity per video: per-frame, per-channel SSIM (Wang et al. 2004; 11x11 Gaussian window with
  sigma 1.5, 'valid' filtering as in `tf.image.ssim`) averaged over positions, channels and frames -> `(B,)`."""
  if x.shape != y.shape or x.ndim != 5:
    raise ValueError(f"ssim needs two (B, T, H, W, C) videos of equal shape, got {x.shape} and {y.shape}")
  b, t, h, w, c = x.shape
  if min(h, w) < window:
    raise ValueError(f"frames {h}x{w} are smaller than the SSIM window {window}")
  g = _gaussian_window(window, sigma)
  x = jnp.asarray(x, jnp.float32).reshape(b * t, h, w, c)
  y = jnp.asarray(y, jnp.float32).reshape(b * t, h, w, c)
  mx, my = _blur(x, g), _blur(y, g)
  sxx = _blur(x * x, g) - mx * mx
  syy = _blur(y * y, g) - my * my
  sxy = _blur(x * y, g) - mx * my
  c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
  s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
  return jnp.mean(s.reshape(b, -1), axis=1)


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy in nats per token, in float32: logits `(B, ..., K)`, int targets `(B, ...)` -> `(B, ...)`. The
  one definition: the prior's training loss (`train.steps`) and the bits/dim evaluator both use it."""
  return optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits, jnp.float32),
                                                         jnp.asarray(targets, jnp.int32))


def bits_per_dim(nats_per_dim: float | jax.Array) -> float | jax.Array:
  """Converts a loss in nats per dimension (here: per latent token) to bits per dimension: `nats / ln 2`."""
  return nats_per_dim / LN2
