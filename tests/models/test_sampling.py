"""Cached autoregressive decoding: parity with the original's decode and the full forward; sampler behaviour."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import videogpt_jax
from tests import fixtures
from tests.models.test_gpt import VARIANTS, original, random_codes, tiny_gpt
from videogpt_jax.models import conditioning, sampling


def _full_forward_steps(module, variables, codes, cond=None) -> np.ndarray:
  """Full-forward logits rearranged like `step_logits`: `(L, B, K)`."""
  # Variables are arguments, not closed-over constants (XLA would constant-fold the convolutions on them).
  logits = jax.jit(lambda v, c, cond: module.apply(v, c, cond))(variables, codes, cond or {})
  return np.asarray(logits).reshape(codes.shape[0], module.seq_len, -1).transpose(1, 0, 2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decoding_matches_original_and_full_forward(variant):
  z, module, variables, cond = original(variant)
  ref, _ = fixtures.load("gpt_small_sample.npz")
  np.testing.assert_array_equal(ref["codes"], z["codes"])
  steps = np.asarray(sampling.step_logits(module, variables, z["codes"], cond=cond))
  assert steps.shape == ref[f"{variant}/step_logits"].shape
  # The original's own decode-vs-forward gap is <= ~3e-6 (float32 noise); allow a few times that.
  assert np.abs(steps - ref[f"{variant}/step_logits"]).max() < 1e-5
  full = _full_forward_steps(module, variables, jnp.asarray(z["codes"], jnp.int32), cond)
  assert np.abs(steps - full).max() < 1e-5
  assert fixtures.rel_err(steps, ref[f"{variant}/step_logits"]) < 1e-6


@pytest.mark.parametrize("attn_type", ["sparse", "axial"])
def test_cached_decoding_matches_full_forward_for_sparse_patterns(attn_type):
  module, variables = tiny_gpt(attn_type)
  codes = random_codes(module)
  steps = np.asarray(sampling.step_logits(module, variables, codes))
  full = _full_forward_steps(module, variables, codes)
  assert np.abs(steps - full).max() < 1e-5 * max(1.0, np.abs(full).max())
  # The pattern matters: a full-attention model with the same weights gives different logits.
  dense = _full_forward_steps(module.clone(attn_type="full"), variables, codes)
  assert np.abs(dense - full).max() > 1e-3


def test_sampling_is_deterministic_and_valid():
  _, module, variables, _ = original("uncond")
  a = videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2)
  b = videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2)
  c = videogpt_jax.sample(module, variables, jax.random.PRNGKey(1), 2)
  assert a.shape == (2, *module.shape) and a.dtype == jnp.int32
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).any()
  assert 0 <= int(a.min()) and int(a.max()) < module.n_codes


@pytest.mark.parametrize("variant", ["uncond", "framecond", "classcond"])
def test_samples_do_not_depend_on_group_size(variant):
  """Decoding in groups (CPU: KV caches that fit the processor's cache) gives the batch's samples exactly,
  including a padded last group."""
  _, module, variables, cond = original(variant)
  n = 3
  cond = {k: jnp.concatenate([v, v[:1]])[:n] for k, v in cond.items()}
  whole = videogpt_jax.sample(module, variables, jax.random.PRNGKey(4), n, group_size=n, cond=cond)
  for group in (1, 2):
    np.testing.assert_array_equal(
        whole, videogpt_jax.sample(module, variables, jax.random.PRNGKey(4), n, group_size=group, cond=cond))
  assert len({np.asarray(whole[i]).tobytes() for i in range(n)}) == n  # independent draws per sample
  with pytest.raises(ValueError, match="group_size"):
    videogpt_jax.sample(module, variables, jax.random.PRNGKey(4), n, group_size=0, cond=cond)


def test_default_group_size_keeps_caches_within_budget():
  _, module, _, _ = original("uncond")
  big = module.clone(shape=(8, 32, 32), hidden_dim=576, layers=8)
  assert sampling.kv_cache_bytes(big) == 8 * 2 * 576 * 8192 * 4
  assert sampling.default_group_size(big, 16, "cpu") == 1  # 75 MiB per sample: one at a time
  assert sampling.default_group_size(module, 5, "cpu") == 5  # tiny caches: the whole batch
  assert sampling.default_group_size(big, 16, "tpu") == 16  # accelerators: the whole batch, whatever the host
  with pytest.raises(ValueError, match="platform"):
    sampling.default_group_size(big, 16, "TPU")


def test_sampled_tokens_follow_the_softmax():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  ids = jnp.arange(20000, dtype=jnp.int32)
  noise = sampling.gumbel_noise(jax.random.PRNGKey(0), jnp.array([7]), ids, 4)[0]  # (samples, codes)
  draws = jax.jit(lambda t: jnp.argmax(logits / t + noise, axis=-1))
  freq = np.bincount(np.asarray(draws(jnp.float32(1.0))), minlength=4) / ids.size
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)
  hot = np.bincount(np.asarray(draws(jnp.float32(0.25))), minlength=4) / ids.size
  p = np.array([0.5, 0.3, 0.15, 0.05]) ** 4
  np.testing.assert_allclose(hot, p / p.sum(), atol=0.015)


def test_compiled_once_per_configuration():
  _, module, variables, _ = original("uncond")
  videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2)
  before = sampling._compiled_sampler.cache_info()
  group = sampling.default_group_size(module, 2, module.platform)
  fn = sampling._compiled_sampler(module, 2, None, False, False, group)
  traces = fn._cache_size()
  for seed in range(3):
    videogpt_jax.sample(module, variables, jax.random.PRNGKey(seed), 2)
  after = sampling._compiled_sampler.cache_info()
  assert after.misses == before.misses and after.hits >= before.hits + 3
  assert fn._cache_size() == traces


def _support_ranks(module, variables, samples, cond=None):
  """Rank of each sampled code among the logits the model gave it (teacher-forced on the sample), `(L, B)`."""
  logits = np.asarray(sampling.step_logits(module, variables, samples, cond=cond))  # (L, B, K)
  flat = np.asarray(samples).reshape(samples.shape[0], -1).T  # (L, B)
  chosen = np.take_along_axis(logits, flat[..., None], axis=-1)
  return (logits > chosen).sum(-1), logits, flat


def test_top_k_restricts_support():
  _, module, variables, _ = original("uncond")
  greedy = videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2, temperature=0.0)
  top1 = videogpt_jax.sample(module, variables, jax.random.PRNGKey(3), 2, top_k=1)
  np.testing.assert_array_equal(greedy, top1)
  ranks, _, _ = _support_ranks(module, variables, greedy)
  assert (ranks == 0).all()
  s = videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2, top_k=3)
  ranks, _, _ = _support_ranks(module, variables, s)
  assert ranks.max() <= 2 and ranks.max() > 0  # within the top 3, and not always the argmax


def test_top_p_restricts_support():
  _, module, variables, _ = original("uncond")
  top_p = 0.5
  s = videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2, top_p=top_p)
  ranks, logits, _ = _support_ranks(module, variables, s)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  sorted_probs = -np.sort(-probs, axis=-1)
  mass_before = np.take_along_axis(np.cumsum(sorted_probs, -1) - sorted_probs, ranks[..., None], -1)[..., 0]
  assert (mass_before < top_p + 1e-5).all()
  unrestricted = videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2)
  ranks_all, _, _ = _support_ranks(module, variables, unrestricted)
  assert ranks.mean() < ranks_all.mean()


def test_filter_logits_against_numpy():
  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 20)) * 3
  x = np.asarray(logits)
  kept = np.asarray(sampling.filter_logits(logits, top_k=4)) > -1e29
  np.testing.assert_array_equal(kept, x >= np.sort(x, -1)[:, -4:-3])
  p = np.exp(x - x.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  kept = np.asarray(sampling.filter_logits(logits, top_p=0.7)) > -1e29
  for row in range(3):
    order = np.argsort(-p[row])
    n_keep = int(np.searchsorted(np.cumsum(p[row][order]), 0.7) + 1)
    np.testing.assert_array_equal(np.flatnonzero(kept[row]), np.sort(order[:n_keep]))


def test_conditional_sampling():
  z, module, variables, cond = original("classcond")
  a = videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2, cond=cond)
  b = videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2,
                          cond=conditioning.make_cond(label=(cond["label"] + 1) % 5))
  assert a.shape == z["codes"].shape and (np.asarray(a) != np.asarray(b)).any()
  # The original's keyword form is the same input.
  np.testing.assert_array_equal(a, videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2,
                                                       labels=cond["label"]))
  with pytest.raises(ValueError, match="labels"):
    videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2)
  z, module, variables, cond = original("framecond")
  a = videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2, cond=cond)
  b = videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2,
                          cond=conditioning.make_cond(frames=-cond["frames"]))
  assert a.shape == z["codes"].shape and (np.asarray(a) != np.asarray(b)).any()
  with pytest.raises(ValueError, match="batch"):
    videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 3, cond=cond)


def test_bad_sampling_arguments():
  _, module, variables, _ = original("uncond")
  for kw, match in (({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p"), ({"temperature": -1.0}, "temperature")):
    with pytest.raises(ValueError, match=match):
      videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 2, **kw)
  with pytest.raises(ValueError, match="n must be"):
    videogpt_jax.sample(module, variables, jax.random.PRNGKey(0), 0)


class _StubVQVAE(nn.Module):
  """Decodes code c at every pixel to the value `c / 4 - 1` (spans below, inside and above [-0.5, 0.5])."""

  @nn.compact
  def decode_from_indices(self, codes):
    scale = self.param("scale", nn.initializers.ones, ())
    video = (codes.astype(jnp.float32) / 4.0 - 1.0) * scale
    return jnp.broadcast_to(video[..., None], (*codes.shape, 3))

  def __call__(self, codes):
    return self.decode_from_indices(codes)


def test_decode_to_video_clips_shifts_and_scales():
  vqvae = _StubVQVAE()
  codes = jnp.arange(10, dtype=jnp.int32).reshape(1, 10, 1, 1)
  variables = vqvae.init(jax.random.PRNGKey(0), codes)
  video = np.asarray(sampling.decode_to_video(vqvae, variables, codes))
  assert video.dtype == np.uint8 and video.shape == (1, 10, 1, 1, 3)
  expected = ((np.clip(np.arange(10) / 4.0 - 1.0, -0.5, 0.5) + 0.5) * 255).astype(np.uint8)
  np.testing.assert_array_equal(video[0, :, 0, 0, 0], expected)


def test_decode_to_video_matches_original_samples():
  """The original's sample() output for the teacher-forced codes, through the imported VQ-VAE."""
  from videogpt_jax.convert import torch_videogpt
  vq, meta = fixtures.load("vqvae_small.npz")
  vqvae, vqvae_variables = torch_videogpt.load_vqvae(fixtures.state_dict(vq), **meta["hparams"]["args"])
  ref, _ = fixtures.load("gpt_small_sample.npz")
  video = np.asarray(sampling.decode_to_video(vqvae, vqvae_variables, ref["codes"]))
  expected = fixtures.nthwc(ref["samples_video"]) * 255.0  # original: [0, 1]; uint8 = truncation of x * 255
  assert video.dtype == np.uint8 and video.shape == expected.shape
  # Float rounding can move a value across an integer boundary: at most 1 level, and rarely.
  diff = np.abs(video.astype(np.int32) - expected.astype(np.uint8).astype(np.int32))
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_decode_loop_updates_kv_caches_in_place():
  """No per-step copies of the caches in the compiled loop (they made decoding 5-50x slower)."""
  module, variables = tiny_gpt()
  codes = random_codes(module)
  hlo = sampling._compiled_teacher_forcing(module).lower(variables, codes, {}).compile().as_text()
  b, h, length, d = 2, module.heads, module.seq_len, module.head_dim
  cache_shapes = (f"f32[{b},{h},{d},{length}]", f"f32[{b},{h},{length},{d}]")
  copies = [line for line in hlo.splitlines() if " copy(" in line and any(s in line for s in cache_shapes)]
  # At most one copy per cache buffer, of the zero initial value, outside the loop.
  assert len(copies) <= 2 * module.layers, "\n".join(copies)
