"""EMA codebook: against an independent numpy transcription of the original's Codebook, and inside jax.jit."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogpt_jax.models import quantizer

K, D = 8, 4


class Codebook(nn.Module):
  """The quantiser alone, as `VQVAE` uses it: its state at the top of the `codebook` collection."""
  n_codes: int
  embedding_dim: int

  def setup(self):
    self.state = quantizer.declare_state(self, self.n_codes, self.embedding_dim)

  def __call__(self, z, train=False, draws=None):
    return quantizer.quantize(self.state, z, update=train and not self.is_initializing(),
                              key_fn=lambda: self.make_rng("codebook"), draws=draws)


def reference_step(state, flat, init_idx=None, restart_idx=None, restart_noise=None):
  """The original `Codebook.forward` in training mode, in float64 numpy (draws given explicitly)."""
  emb, counts_ema, z_avg = (np.array(state[k], np.float64) for k in ("embeddings", "N", "z_avg"))
  flat = flat.astype(np.float64)
  if not state["initialized"]:
    emb = z_avg = flat[init_idx]
    counts_ema = np.ones(K)
  dist = ((flat[:, None, :] - emb[None]) ** 2).sum(-1)
  codes = dist.argmin(1)
  e = emb[codes]
  onehot = np.eye(K)[codes]
  counts_ema = 0.99 * counts_ema + 0.01 * onehot.sum(0)
  z_avg = 0.99 * z_avg + 0.01 * onehot.T @ flat
  n = counts_ema.sum()
  weights = (counts_ema + 1e-7) / (n + K * 1e-7) * n
  y = flat
  if len(flat) < K:
    reps = -(-K // len(flat))
    y = np.tile(flat, (reps, 1)) + restart_noise * 0.01 / np.sqrt(D)
  usage = (counts_ema >= 1)[:, None]
  new_emb = np.where(usage, z_avg / weights[:, None], y[restart_idx])
  probs = onehot.mean(0)
  return dict(codes=codes, commitment_loss=0.25 * np.mean((flat - e) ** 2),
              perplexity=np.exp(-np.sum(probs * np.log(probs + 1e-10))),
              embeddings=new_emb, N=counts_ema, z_avg=z_avg, e=e)


def _state(rng, initialized=True):
  emb = rng.normal(size=(K, D)).astype(np.float32)
  return {"embeddings": emb, "N": rng.uniform(0.5, 3.0, size=K).astype(np.float32),
          "z_avg": (emb * rng.uniform(0.5, 3.0, size=(K, 1))).astype(np.float32),
          "initialized": np.array(initialized)}


def _run(state, z, draws=None, key=0, jit=True):
  def f(state, z, draws, key):
    return Codebook(K, D).apply({"codebook": state}, z, train=True, draws=draws, mutable=["codebook"],
                                rngs={"codebook": jax.random.PRNGKey(key)})
  (z_q, aux), new = (jax.jit(f, static_argnums=3) if jit else f)(state, z, draws, key)
  return z_q, aux, new["codebook"]


def _compare(aux, new, ref):
  np.testing.assert_array_equal(np.asarray(aux["codes"]).reshape(-1), ref["codes"])
  for k in ("commitment_loss", "perplexity"):
    np.testing.assert_allclose(float(aux[k]), ref[k], rtol=1e-5)
  for k in ("embeddings", "N", "z_avg"):
    np.testing.assert_allclose(new[k], ref[k], rtol=1e-5, atol=1e-6)


def test_ema_update_and_restarts_match_reference():
  rng = np.random.default_rng(0)
  state = _state(rng)
  state["N"][:3] = 0.2  # These stay dead unless used a lot: exercises the restarts.
  z = rng.normal(size=(2, 3, 2, 2, D)).astype(np.float32)
  restart_idx = rng.permutation(z.size // D)[:K].astype(np.int32)
  draws = {"init_indices": np.arange(K, dtype=np.int32), "restart_indices": restart_idx}
  z_q, aux, new = _run(state, z, draws)
  ref = reference_step(state, z.reshape(-1, D), restart_idx=restart_idx)
  assert (ref["N"] < 1).any() and (ref["N"] >= 1).any()
  _compare(aux, new, ref)
  np.testing.assert_allclose(z_q.reshape(-1, D), ref["e"], atol=1e-6)
  assert bool(new["initialized"])


def test_first_batch_initialisation_inside_jit_matches_reference():
  rng = np.random.default_rng(1)
  state = _state(rng, initialized=False)
  z = rng.normal(size=(1, 2, 3, 4, D)).astype(np.float32)
  init_idx = rng.permutation(24)[:K].astype(np.int32)
  restart_idx = rng.permutation(24)[:K].astype(np.int32)
  _, aux, new = _run(state, z, {"init_indices": init_idx, "restart_indices": restart_idx})
  ref = reference_step(state, z.reshape(-1, D), init_idx=init_idx, restart_idx=restart_idx)
  _compare(aux, new, ref)
  # A code used exactly once right after initialisation lands exactly on N == 1 (alive), as in the original.
  once = np.bincount(ref["codes"], minlength=K) == 1
  assert once.any()
  np.testing.assert_array_equal(np.asarray(new["N"])[once], 1.0)


def test_default_random_initialisation_inside_jit():
  rng = np.random.default_rng(2)
  state = _state(rng, initialized=False)
  z = rng.normal(size=(2, 2, 2, 4, D)).astype(np.float32)
  _, aux, new = _run(state, z, key=3)
  # Every code was seeded by a distinct batch vector (distance 0), so all are used and none restarts.
  counts = np.bincount(np.asarray(aux["codes"]).reshape(-1), minlength=K)
  assert (counts >= 1).all()
  np.testing.assert_allclose(new["N"], 0.99 + 0.01 * counts, rtol=1e-6)
  # Initialised codebooks are not re-seeded: a second step follows the plain EMA update.
  _, aux2, new2 = _run(new, z, key=4)
  ref = reference_step({k: np.asarray(v) for k, v in new.items()}, z.reshape(-1, D), restart_idx=np.arange(K))
  _compare(aux2, new2, ref)


def test_tiling_with_fewer_vectors_than_codes():
  rng = np.random.default_rng(3)
  state = _state(rng)
  state["N"][:] = 0.01  # Every unused code restarts.
  z = rng.normal(size=(1, 1, 1, 3, D)).astype(np.float32)  # 3 vectors < K = 8: tiled 3x to 9 rows.
  noise = rng.normal(size=(9, D)).astype(np.float32)
  restart_idx = rng.permutation(9)[:K].astype(np.int32)
  draws = {"init_indices": restart_idx, "init_noise": noise, "restart_indices": restart_idx, "restart_noise": noise}
  _, aux, new = _run(state, z, draws)
  _compare(aux, new, reference_step(state, z.reshape(-1, D), restart_idx=restart_idx, restart_noise=noise))
  # Default draws: restarted codes are batch vectors plus noise of std 0.01/sqrt(D).
  rows = quantizer.random_rows(jnp.asarray(z.reshape(-1, D)), K, jax.random.PRNGKey(0))
  gap = np.abs(np.asarray(rows)[:, None, :] - z.reshape(1, -1, D)).max(-1).min(-1)
  assert rows.shape == (K, D) and (gap < 0.05).all() and (gap > 0).all()


def test_straight_through_gradient_and_commitment():
  rng = np.random.default_rng(4)
  state = _state(rng)
  z = jnp.asarray(rng.normal(size=(1, 2, 2, 2, D)).astype(np.float32))
  c = jnp.asarray(rng.normal(size=z.shape).astype(np.float32))

  def f(z):
    z_q, aux = Codebook(K, D).apply({"codebook": state}, z)
    return jnp.sum(z_q * c) + aux["commitment_loss"], aux

  grad, aux = jax.grad(f, has_aux=True)(z)
  e = state["embeddings"][np.asarray(aux["codes"])]
  np.testing.assert_allclose(grad, c + 0.25 * 2 * (z - e) / z.size, rtol=1e-5, atol=1e-6)


def test_eval_mode_leaves_state_and_validates_inputs():
  rng = np.random.default_rng(5)
  state = _state(rng, initialized=False)
  z = rng.normal(size=(1, 1, 2, 2, D)).astype(np.float32)
  (_, aux), new = Codebook(K, D).apply({"codebook": state}, z, mutable=["codebook"])
  for k in state:
    np.testing.assert_array_equal(new["codebook"][k], state[k])
  with pytest.raises(ValueError, match="embedding_dim=4"):
    Codebook(K, D).apply({"codebook": state}, z[..., :3])
  with pytest.raises(ValueError, match="unknown draws"):
    Codebook(K, D).apply({"codebook": state}, z, train=True, draws={"perm": np.arange(K)}, mutable=["codebook"])
