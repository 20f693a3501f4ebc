"""Evaluation protocols on tiny random stand-ins that follow the VQ-VAE / GPT / I3D / C3D interfaces."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogpt_jax.evaluation import c3d
from videogpt_jax.evaluation import fvd
from videogpt_jax.evaluation import metrics
from videogpt_jax.evaluation import protocols
from videogpt_jax.models import conditioning

K = 8  # codebook size of the stand-ins


class TinyVQVAE(nn.Module):
  """Contract: `__call__(video, train) -> (recon, aux)`, `encode_to_indices(video) -> codes (B, t, h, w)`."""

  @nn.compact
  def __call__(self, video, train: bool):
    gain = self.param("gain", nn.initializers.constant(0.9), ())
    recon = gain * video + 0.01
    return recon, {"recon_loss": jnp.mean((recon - video) ** 2) / 0.06}

  def encode_to_indices(self, video):
    pooled = video[:, ::2, ::4, ::4, 0]  # (B, T/2, H/4, W/4)
    return jnp.clip(jnp.floor((pooled + 0.5) * K), 0, K - 1).astype(jnp.int32)


class TinyGPT(nn.Module):
  """Contract: `apply(variables, codes, cond=None, deterministic=True) -> (B, t, h, w, K)`, `cond` a mapping of
  `conditioning.make_cond`."""
  uniform: bool = False

  @nn.compact
  def __call__(self, codes, cond=None, deterministic=True):
    cond = cond or {}
    emb = self.param("emb", nn.initializers.normal(1.0), (K, K))
    logits = emb[codes]
    if "frames" in cond:
      logits = logits + jnp.mean(cond["frames"], axis=(1, 2, 3, 4))[:, None, None, None, None]
    if "label" in cond:
      logits = logits + cond["label"][:, None, None, None, None].astype(jnp.float32)
    return jnp.zeros_like(logits) if self.uniform else logits


def _iterator(n_batches, batch=3, masked_last=True, seed=0):
  rng = np.random.default_rng(seed)
  for i in range(n_batches):
    mask = np.ones(batch, bool)
    if masked_last and i == n_batches - 1:
      mask[-1] = False  # a padding row: must be ignored
    video = rng.uniform(-0.5, 0.5, (batch, 4, 16, 16, 3)).astype(np.float32)
    if not mask[-1]:
      video[-1] = 100.0  # would dominate every metric if it were not dropped
    yield {"video": jnp.asarray(video), "label": jnp.asarray(rng.integers(0, 5, batch), jnp.int32),
           "mask": jnp.asarray(mask)}


def _valid_videos(n_batches, **kw):
  out = [np.asarray(b["video"])[np.asarray(b["mask"])] for b in _iterator(n_batches, **kw)]
  return np.concatenate(out)


def test_evaluate_reconstruction():
  vqvae = TinyVQVAE()
  variables = vqvae.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 16, 16, 3)), train=False)
  out = protocols.evaluate_reconstruction(vqvae, variables, _iterator(2))
  x = _valid_videos(2).astype(np.float64)
  recon = 0.9 * x + 0.01
  mse = np.mean((recon - x) ** 2)
  assert out["n_videos"] == 5
  assert out["mse"] == pytest.approx(mse, rel=1e-5)
  assert out["data_variance"] == pytest.approx(x.var(), rel=1e-6)
  assert out["nmse"] == pytest.approx(mse / x.var(), rel=1e-5)
  assert out["recon_loss"] == pytest.approx(mse / 0.06, rel=1e-5)
  per_video = np.mean((np.clip(recon, -0.5, 0.5) - x).reshape(5, -1) ** 2, axis=1)
  assert out["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / per_video)), rel=1e-4)
  assert 0 < out["ssim"] < 1
  assert protocols.evaluate_reconstruction(vqvae, variables, _iterator(3), max_batches=1)["n_videos"] == 3


def test_evaluate_bits_per_dim():
  vqvae = TinyVQVAE()
  vq_vars = vqvae.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 16, 16, 3)), train=False)
  uniform = TinyGPT(uniform=True)
  g_vars = uniform.init(jax.random.PRNGKey(1), jnp.zeros((1, 2, 4, 4), jnp.int32))
  out = protocols.evaluate_bits_per_dim(uniform, g_vars, vqvae, vq_vars, _iterator(2))
  assert out["bits_per_dim"] == pytest.approx(math.log2(K), rel=1e-6) and out["n_videos"] == 5

  gpt = TinyGPT()
  out = protocols.evaluate_bits_per_dim(gpt, g_vars, vqvae, vq_vars, _iterator(2), n_cond_frames=1,
                                        class_cond=True)
  nats = []
  for b in _iterator(2):
    keep = np.asarray(b["mask"])
    codes = vqvae.apply(vq_vars, b["video"], method="encode_to_indices")
    logits = gpt.apply(g_vars, codes, conditioning.make_cond(frames=b["video"][:, :1], label=b["label"]))
    nats.append(np.asarray(metrics.token_cross_entropy(logits, codes)).reshape(3, -1).mean(1)[keep])
  assert out["nats_per_dim"] == pytest.approx(np.concatenate(nats).mean(), rel=1e-5)
  assert out["bits_per_dim"] == pytest.approx(out["nats_per_dim"] / math.log(2), rel=1e-9)
  with pytest.raises(ValueError, match="no 'label'"):
    protocols.evaluate_bits_per_dim(gpt, g_vars, vqvae, vq_vars, [{"video": jnp.zeros((1, 4, 16, 16, 3))}],
                                    class_cond=True)


class _TinyI3D(nn.Module):
  num_classes: int = 5

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(jnp.concatenate([x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3))], -1))


def test_evaluate_fvd(tmp_path):
  i3d = _TinyI3D()
  i3d_vars = i3d.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 224, 224, 3)))
  seen = []

  def sample_fn(rng, batch):
    seen.append(batch["video"].shape[0])
    noise = jax.random.uniform(rng, batch["video"].shape, minval=-0.5, maxval=0.5)
    return np.asarray(0.5 * batch["video"] + 0.5 * noise)

  kw = dict(rng=jax.random.PRNGKey(0), n_videos=4, i3d=(i3d, i3d_vars), i3d_batch_size=4)
  out = protocols.evaluate_fvd(sample_fn, _iterator(4), 2, **kw)
  assert len(out["fvd_trials"]) == 2 and all(v > 0 for v in out["fvd_trials"])
  assert out["fvd"] == pytest.approx(np.mean(out["fvd_trials"]))
  assert out["fvd_std"] == pytest.approx(np.std(out["fvd_trials"]))
  assert seen == [3, 1, 2, 2]  # trial 0: batch 0 + 1 row of batch 1; trial 1: batch 1's other 2 + 2 of batch 2
  # same inputs and key -> same result; with the real-logit cache, same result and a file per trial
  parts = {"dataset": "tiny", "split": "test"}
  cached = protocols.evaluate_fvd(sample_fn, _iterator(4), 2, cache_dir=str(tmp_path), cache_parts=parts, **kw)
  again = protocols.evaluate_fvd(sample_fn, _iterator(4), 2, cache_dir=str(tmp_path), cache_parts=parts, **kw)
  assert cached["fvd_trials"] == pytest.approx(out["fvd_trials"], rel=1e-9) == again["fvd_trials"]
  assert len(list(tmp_path.glob("features_*.npz"))) == 2
  # identical samples give FVD 0 (up to the uint8 round trip)
  ident = protocols.evaluate_fvd(lambda rng, b: b["video"], _iterator(2), 1, **kw)
  assert abs(ident["fvd"]) < 1e-6
  with pytest.raises(ValueError, match="ran out"):
    protocols.evaluate_fvd(sample_fn, _iterator(1), 2, **kw)


def test_evaluate_inception_score(tmp_path):
  rng = np.random.default_rng(0)
  arrays, cin = {}, 3
  for name in c3d.CONV_NAMES:
    arrays[f"{name}/W"] = (rng.normal(size=(4, cin, 3, 3, 3)) * 0.01).astype(np.float32)
    arrays[f"{name}/b"] = np.zeros(4, np.float32)
    cin = 4
  for name, (i, o) in zip(c3d.FC_NAMES, ((64, 8), (8, 8), (8, 101))):
    arrays[f"{name}/W"] = rng.normal(size=(o, i)).astype(np.float32)
    arrays[f"{name}/b"] = rng.normal(size=o).astype(np.float32)
  module, variables = c3d.from_chainer_npz(arrays)
  mean = rng.uniform(90, 110, (3, 16, 128, 128)).astype(np.float32)
  calls = []

  def sample_fn(key, n):
    calls.append(n)
    return np.asarray(jax.random.uniform(key, (n, 16, 24, 24, 3), minval=-0.5, maxval=0.5))

  out = protocols.evaluate_inception_score(sample_fn, 10, (module, variables, c3d.prepare_mean(mean)),
                                           rng=jax.random.PRNGKey(0), sample_batch_size=6, splits=2,
                                           c3d_batch_size=5)
  assert calls == [6, 4] and out["n_samples"] == 10
  assert 1.0 <= out["is"] <= 101.0 and out["is_std"] >= 0.0


def test_to_uint8_then_preprocess_is_in_range():
  v = np.random.default_rng(1).uniform(-0.5, 0.5, (1, 2, 8, 8, 3)).astype(np.float32)
  x = np.asarray(fvd.preprocess(fvd.to_uint8(v)))
  assert x.min() >= -1.0 and x.max() <= 1.0
