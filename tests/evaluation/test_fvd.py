"""Fréchet distance (fixture `fvd.npz` + closed forms), batched I3D feature extraction, and the feature cache."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import fixtures
from videogpt_jax import visualize
from videogpt_jax.evaluation import features_cache
from videogpt_jax.evaluation import fvd


@pytest.mark.parametrize("case", ["small", "repo_shape"])
def test_frechet_distance_matches_float64_reference(case):
  z, _ = fixtures.load("fvd.npz")
  ref = float(z[f"{case}/fvd_f64"])
  got = fvd.frechet_distance(z[f"{case}/x1"], z[f"{case}/x2"])
  assert isinstance(got, float)
  assert abs(got - ref) / ref < 1e-6, (got, ref)
  # the float32 original agrees only to its own noise level
  assert abs(got - float(z[f"{case}/fvd_float32"])) / ref < 1e-3


def _random_orthogonal(rng, d):
  q, r = np.linalg.qr(rng.normal(size=(d, d)))
  return q * np.sign(np.diag(r))


@pytest.mark.parametrize("rank", [12, 5])  # full rank and singular covariances
def test_frechet_distance_closed_form(rank):
  rng = np.random.default_rng(0)
  d = 12
  q = _random_orthogonal(rng, d)
  a = np.zeros(d)
  b = np.zeros(d)
  a[:rank] = rng.uniform(0.1, 3.0, rank)
  b[:rank] = rng.uniform(0.1, 3.0, rank)
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  # commuting covariances: tr sqrt(S1 S2) = sum sqrt(a_i b_i)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
  got = fvd.frechet_distance_from_stats(mu1, s1, mu2, s2)
  assert abs(got - expected) < 1e-10 * max(1.0, expected)


def test_frechet_distance_of_a_set_with_itself_is_zero():
  rng = np.random.default_rng(1)
  for n, d in ((64, 400), (300, 16)):  # N < D (singular covariance) and N > D
    x = rng.normal(size=(n, d)).astype(np.float32)
    scale = np.trace(np.cov(x.astype(np.float64), rowvar=False))
    assert abs(fvd.frechet_distance(x, x)) < 1e-9 * scale
  y = x + 1.0  # a pure mean shift of 1 in every dimension
  assert abs(fvd.frechet_distance(x, y) - x.shape[1]) < 1e-8 * x.shape[1]


def test_frechet_distance_errors():
  with pytest.raises(ValueError, match="feature sets"):
    fvd.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="N >= 2"):
    fvd.frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))


class _TinyFeatures(nn.Module):
  """Stand-in for I3D with the same interface: (B, T, 224, 224, 3) in [-1, 1] -> (B, num_classes)."""
  num_classes: int = 6

  @nn.compact
  def __call__(self, x):
    pooled = jnp.concatenate([x.mean(axis=(1, 2, 3)), jnp.square(x).mean(axis=(1, 2, 3))], axis=-1)
    return nn.Dense(self.num_classes)(pooled)


@pytest.fixture(scope="module")
def tiny():
  module = _TinyFeatures()
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 224, 224, 3)))
  return module, variables


def test_batched_logits_equal_one_by_one(tiny):
  videos = np.random.default_rng(2).integers(0, 256, (5, 2, 16, 20, 3), dtype=np.uint8)
  batched = fvd.i3d_logits(videos, *tiny, batch_size=2)  # 2 + 2 + (1 padded to 2)
  single = np.concatenate([fvd.i3d_logits(videos[i:i + 1], *tiny, batch_size=1) for i in range(5)])
  assert batched.shape == (5, 6)
  np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="uint8"):
    fvd.i3d_logits(videos.astype(np.float32), *tiny)


def test_compute_fvd(tiny):
  rng = np.random.default_rng(3)
  real = rng.integers(0, 256, (8, 2, 16, 16, 3), dtype=np.uint8)
  assert abs(fvd.compute_fvd(real, real, i3d=tiny, batch_size=4)) < 1e-6
  fake = np.clip(real.astype(np.int32) + 60, 0, 255).astype(np.uint8)
  d = fvd.compute_fvd(real, fake, i3d=tiny, batch_size=4)
  logits = fvd.i3d_logits(real, *tiny, batch_size=4)
  assert d > 0 and d == pytest.approx(fvd.compute_fvd(None, fake, i3d=tiny, batch_size=4, real_logits=logits))


def test_to_uint8_for_fvd_truncates_like_the_original():
  x = np.array([-0.5, -0.6, 0.0, 0.5, 0.7, 0.499], np.float32)
  np.testing.assert_array_equal(visualize.to_uint8(x, truncate=True), [0, 0, 127, 255, 255, 254])
  np.testing.assert_array_equal(visualize.to_uint8(x), [0, 0, 128, 255, 255, 255])  # pictures round
  # Rounding inverts the data pipeline's u8 / 255 - 0.5 exactly; truncation (the original's FVD) loses a level on
  # some values, on real clips and samples alike.
  u8 = np.arange(256, dtype=np.uint8)
  np.testing.assert_array_equal(visualize.to_uint8(u8.astype(np.float32) / 255.0 - 0.5), u8)


def test_features_cache(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return np.arange(6, dtype=np.float32).reshape(2, 3)

  parts = {"dataset": "bair", "split": "test", "n": 2}
  a = features_cache.cached(tmp_path, parts, compute)
  b = features_cache.cached(tmp_path, dict(reversed(list(parts.items()))), compute)  # key order is irrelevant
  np.testing.assert_array_equal(a, b)
  assert len(calls) == 1
  features_cache.cached(tmp_path, {**parts, "split": "train"}, compute)
  assert len(calls) == 2
  assert features_cache.cache_key(parts) != features_cache.cache_key({**parts, "n": 3})
  assert features_cache.load(tmp_path, {"other": 1}) is None
  features_cache.cached(None, parts, compute)  # no cache dir: always computes
  assert len(calls) == 3
