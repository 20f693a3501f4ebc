"""Closed-form checks of the per-video metrics and likelihood units."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from videogpt_jax.evaluation import metrics


def _videos(seed=0, shape=(2, 3, 24, 20, 3)):
  return np.random.default_rng(seed).uniform(-0.5, 0.5, shape).astype(np.float32)


def test_mse_psnr_known_values():
  x = _videos()
  d = np.array([0.1, 0.02], np.float32).reshape(2, 1, 1, 1, 1)
  y = x + d
  np.testing.assert_allclose(metrics.mse(x, y), [0.01, 0.0004], rtol=1e-4)
  np.testing.assert_allclose(metrics.psnr(x, y), [20.0, 10 * math.log10(1 / 0.0004)], rtol=1e-4)
  np.testing.assert_allclose(metrics.psnr(x, y, data_range=2.0), [20.0 + 20 * math.log10(2.0),
                                                                   10 * math.log10(4 / 0.0004)], rtol=1e-4)
  np.testing.assert_allclose(metrics.normalized_mse(x, y, data_variance=0.01), [1.0, 0.04], rtol=1e-4)
  assert np.isinf(np.asarray(metrics.psnr(x, x))).all()
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.mse(x, x[:1])
  with pytest.raises(ValueError, match="data_variance"):
    metrics.normalized_mse(x, y, data_variance=0.0)


def test_ssim_identity_and_ordering():
  x = _videos(shape=(2, 2, 32, 32, 3))
  np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=1e-6)
  rng = np.random.default_rng(1)
  small = x + 0.02 * rng.normal(size=x.shape).astype(np.float32)
  large = x + 0.2 * rng.normal(size=x.shape).astype(np.float32)
  s_small, s_large = np.asarray(metrics.ssim(x, small)), np.asarray(metrics.ssim(x, large))
  assert (s_small < 1).all() and (s_large < s_small).all()
  with pytest.raises(ValueError, match="smaller than the SSIM window"):
    metrics.ssim(x[:, :, :8, :8], x[:, :, :8, :8])


def test_ssim_matches_tensorflow():
  tf = pytest.importorskip("tensorflow")
  x = _videos(shape=(2, 2, 32, 28, 3))
  y = np.clip(x + 0.1 * np.random.default_rng(2).normal(size=x.shape), -0.5, 0.5).astype(np.float32)
  ref = tf.image.ssim(tf.constant(x.reshape(4, 32, 28, 3)), tf.constant(y.reshape(4, 32, 28, 3)), max_val=1.0,
                      filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03).numpy().reshape(2, 2).mean(axis=1)
  np.testing.assert_allclose(metrics.ssim(x, y), ref, rtol=1e-4, atol=1e-5)


def test_cross_entropy_and_bits_per_dim():
  k = 16
  codes = np.random.default_rng(3).integers(0, k, (2, 2, 3, 3))
  uniform = jnp.zeros((2, 2, 3, 3, k))
  ce = np.asarray(metrics.token_cross_entropy(uniform, codes))
  np.testing.assert_allclose(ce, math.log(k), rtol=1e-6)
  assert metrics.bits_per_dim(math.log(k)) == pytest.approx(math.log2(k))
  assert metrics.bits_per_dim(math.log(2.0)) == pytest.approx(1.0)
  logits = np.random.default_rng(4).normal(size=(2, 2, 3, 3, k)).astype(np.float32)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ref = -np.take_along_axis(logp, codes[..., None], -1)[..., 0]
  np.testing.assert_allclose(metrics.token_cross_entropy(logits, codes), ref, rtol=1e-5)
