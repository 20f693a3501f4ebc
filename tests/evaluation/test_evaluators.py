"""The evaluators' computations on tiny random stand-ins that follow the VQ-VAE / GPT / I3D / C3D interfaces, and
the registry / `config.evals` plumbing that selects them."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from videogpt_jax import visualize
from videogpt_jax.evaluation import base, c3d, evaluators, fvd, metrics, suite
from videogpt_jax.evaluation.evaluators import bits_per_dim, inception_score, reconstruction
from videogpt_jax.evaluation.evaluators import fvd as fvd_eval

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
  """Contract: `apply(variables, codes, cond=None, deterministic=True) -> (B, t, h, w, K)`, `cond` the mapping of
  `models.conditioning.make_cond`."""
  uniform: bool = False
  n_cond_frames: int = 0
  class_cond_dim: int | None = None

  @nn.compact
  def __call__(self, codes, cond=None, deterministic=True):
    emb = self.param("emb", nn.initializers.normal(1.0), (K, K))
    logits = emb[codes]
    cond = cond or {}
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


def test_reconstruction():
  vqvae = TinyVQVAE()
  variables = vqvae.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 16, 16, 3)), train=False)
  out, shown = reconstruction.evaluate((vqvae, variables), _iterator(2), num_shown=2)
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
  np.testing.assert_allclose(shown[0], x[:2], rtol=1e-6)  # originals above their reconstructions
  np.testing.assert_allclose(shown[1], np.clip(recon[:2], -0.5, 0.5), rtol=1e-5, atol=1e-6)
  capped, _ = reconstruction.evaluate((vqvae, variables), base.limited(_iterator(3), 1, "test"))
  assert capped["n_videos"] == 3


def test_bits_per_dim():
  vqvae = TinyVQVAE()
  vq_vars = vqvae.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 16, 16, 3)), train=False)
  uniform = TinyGPT(uniform=True)
  g_vars = uniform.init(jax.random.PRNGKey(1), jnp.zeros((1, 2, 4, 4), jnp.int32))
  out = bits_per_dim.evaluate((uniform, g_vars), (vqvae, vq_vars), _iterator(2))
  assert out["bits_per_dim"] == pytest.approx(math.log2(K), rel=1e-6) and out["n_videos"] == 5

  gpt = TinyGPT(n_cond_frames=1, class_cond_dim=5)
  out = bits_per_dim.evaluate((gpt, g_vars), (vqvae, vq_vars), _iterator(2))
  nats = []  # (clips, latent frames)
  for b in _iterator(2):
    keep = np.asarray(b["mask"])
    codes = vqvae.apply(vq_vars, b["video"], method="encode_to_indices")
    logits = gpt.apply(g_vars, codes, {"frames": b["video"][:, :1], "label": b["label"]})
    ce = np.asarray(metrics.token_cross_entropy(logits, codes))
    nats.append(ce.reshape(*ce.shape[:2], -1).mean(2)[keep])
  nats = np.concatenate(nats)
  assert out["nats_per_dim"] == pytest.approx(nats.mean(), rel=1e-5)
  per_frame = out["bits_per_latent_frame"]
  assert len(per_frame) == codes.shape[1] == 2 and per_frame[0] != pytest.approx(per_frame[1], rel=1e-3)
  np.testing.assert_allclose(per_frame, nats.mean(0) / math.log(2), rtol=1e-5)
  assert out["bits_per_dim"] == pytest.approx(out["nats_per_dim"] / math.log(2), rel=1e-9)
  with pytest.raises(ValueError, match="no 'label'"):
    bits_per_dim.evaluate((gpt, g_vars), (vqvae, vq_vars), [{"video": jnp.zeros((1, 4, 16, 16, 3))}])


class _TinyI3D(nn.Module):
  num_classes: int = 5

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(jnp.concatenate([x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3))], -1))


def test_fvd_trials_use_a_new_key_per_trial():
  i3d = _TinyI3D()
  i3d_vars = i3d.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 224, 224, 3)))
  real = _valid_videos(2)
  real_logits = fvd.i3d_logits(visualize.to_uint8(real, truncate=True), i3d, i3d_vars, 4)
  keys = []

  def sample_fn(key):
    keys.append(key)
    noise = np.asarray(jax.random.uniform(key, real.shape, minval=-0.5, maxval=0.5))
    return 0.5 * real + 0.5 * noise

  scores = fvd_eval.fvd_trials(sample_fn, real_logits, 3, rng=jax.random.PRNGKey(0), i3d=(i3d, i3d_vars),
                               i3d_batch_size=4)
  assert len(scores) == 3 and all(v > 0 for v in scores) and len(set(scores)) == 3
  assert [np.asarray(jax.random.key_data(k)).tolist() for k in keys] == [
      np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.PRNGKey(0), t))).tolist() for t in range(3)]
  # identical samples give FVD 0 (up to the uint8 round trip)
  assert abs(fvd_eval.fvd_trials(lambda key: real, real_logits, 1, rng=jax.random.PRNGKey(0),
                                 i3d=(i3d, i3d_vars), i3d_batch_size=4)[0]) < 1e-6


def test_inception_score(tmp_path):
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

  out = inception_score.evaluate(sample_fn, 10, (module, variables, c3d.prepare_mean(mean)),
                                 rng=jax.random.PRNGKey(0), sample_batch_size=6, splits=2, c3d_batch_size=5)
  assert calls == [6, 4] and out["n_samples"] == 10
  assert 1.0 <= out["is"] <= 101.0 and out["is_std"] >= 0.0


def test_to_uint8_then_preprocess_is_in_range():
  v = np.random.default_rng(1).uniform(-0.5, 0.5, (1, 2, 8, 8, 3)).astype(np.float32)
  x = np.asarray(fvd.preprocess(visualize.to_uint8(v, truncate=True)))
  assert x.min() >= -1.0 and x.max() <= 1.0


# ---------------------------------------------------------------------------------------------------------------
# The registry and `config.evals`.
# ---------------------------------------------------------------------------------------------------------------
def test_registry_is_the_evaluators_package():
  assert set(evaluators.names()) == {"bits_per_dim", "fvd", "fvd_star", "inception_score", "reconstruction",
                                     "samples"}
  assert evaluators.get("reconstruction") is reconstruction.Evaluator
  assert not reconstruction.Evaluator.needs_prior and bits_per_dim.Evaluator.needs_prior
  assert evaluators.build("fvd", n_trials=3).n_trials == 3
  with pytest.raises(ValueError, match="unknown evaluator 'psnr'; known: bits_per_dim, fvd"):
    evaluators.get("psnr")
  with pytest.raises(ValueError, match="evaluator 'fvd'.*n_trails"):
    evaluators.build("fvd", n_trails=3)


def _config(**fields):
  config = ml_collections.ConfigDict(dict(eval_every=10, eval_batches=2, evals=(), eval_options={}))
  config.update(fields)
  return config


def test_config_evals_build_the_listed_evaluators_with_their_options():
  config = _config(evals=("bits_per_dim", "samples"),
                   eval_options={"samples": {"every": 25, "num_samples": 3}, "fvd": {"n_trials": 2}})
  scheduled = suite.from_config(config, has_prior=True)
  assert [(s.name, s.every) for s in scheduled] == [("bits_per_dim", 10), ("samples", 25)]
  assert scheduled[0].evaluator.max_batches == 2  # from config.eval_batches
  assert scheduled[1].evaluator.num_samples == 3
  assert [s.due(20, 100) for s in scheduled] == [True, False]
  assert [s.due(100, 100) for s in scheduled] == [True, True]  # the last step runs every evaluator
  assert suite.from_config(_config(), has_prior=False) == []
  with pytest.raises(ValueError, match="config.evals: 'bits_per_dim' needs a prior; a VQ-VAE run can evaluate "
                                       "reconstruction"):
    suite.from_config(_config(evals=("bits_per_dim",)), has_prior=False)
  with pytest.raises(ValueError, match="config.eval_options.samples: evaluator 'samples'.*num_sample"):
    suite.from_config(_config(evals=("samples",), eval_options={"samples": {"num_sample": 3}}), has_prior=True)
  with pytest.raises(ValueError, match="config.evals / config.eval_options.psnr: unknown evaluator 'psnr'"):
    suite.from_config(_config(evals=("psnr",)), has_prior=True)


def test_run_due_prefixes_names_and_keeps_plottable_scalars():
  calls = []

  class Fake:
    needs_prior = False

    def run(self, vqvae, gpt, data, rng):
      calls.append(np.asarray(jax.random.key_data(rng)).tolist())
      return base.Result(scalars={"x": 1.5, "n": 3, "flag": True, "trials": [1.0, 2.0]},
                         videos={"clips": np.zeros((1, 2, 4, 4, 3))})

  scheduled = [suite.Scheduled("a", Fake(), 5), suite.Scheduled("b", Fake(), 0)]
  out = suite.run_due(scheduled, 10, 100, vqvae=None, gpt=None, data=None, rng=jax.random.PRNGKey(0))
  assert out["scalars"] == {"eval/a/x": 1.5, "eval/a/n": 3.0} and list(out["videos"]) == ["eval/a/clips"]
  assert len(calls) == 1
  assert suite.run_due(scheduled, 11, 100, vqvae=None, gpt=None, data=None, rng=jax.random.PRNGKey(0)) == {
      "scalars": {}, "videos": {}}


class _Builder:
  class info:  # noqa: N801 (a builder's `info` attribute)
    splits = {"train": None, "test": None}


def test_deferred_eval_data_opens_the_dataset_on_the_first_batches_call(monkeypatch):
  from videogpt_jax.data import builders, pipeline
  opened, passes = [], []
  monkeypatch.setattr(builders, "load_builder", lambda name, *a, **kw: opened.append(name) or _Builder())
  monkeypatch.setattr(pipeline, "make_eval_iterator", lambda builder, **kw: passes.append((builder, kw)) or iter(()))
  data_config = ml_collections.ConfigDict(dict(name="moving_mnist", eval_split="test", seq_len=4, resolution=16))
  data = suite.eval_data(data_config, None, batch_size=2, defer=True)
  assert opened == [] and data.info["split"] == "test"
  data.batches(0)
  data.batches(1)
  assert opened == ["moving_mnist"]  # once, kept for later passes
  assert [kw["n_cond_frames"] for _, kw in passes] == [0, 1] and all(isinstance(b, _Builder) for b, _ in passes)
  suite.eval_data(data_config, None, batch_size=2)
  assert opened == ["moving_mnist"] * 2  # not deferred: opened at once
  bad = suite.eval_data(ml_collections.ConfigDict({**data_config.to_dict(), "eval_split": "valid"}), None,
                        batch_size=2, defer=True)
  with pytest.raises(ValueError, match=r"has splits \['test', 'train'\]; asked for 'valid'"):
    bad.batches(0)
