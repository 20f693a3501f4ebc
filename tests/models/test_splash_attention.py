"""Accelerator attention kernels against the XLA path: splash (in the Pallas interpreter, the CPU reference check of
the TPU kernel's masks, tiles and custom VJP) and cuDNN's selection and fallback (the cuDNN call needs a GPU).

Interpret mode costs seconds per call, so shapes stay at 256-512 tokens with 2 heads.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fixtures import rel_err
from tests.models.test_gpt import random_codes, tiny_gpt
from videogpt_jax.models import attention_patterns as ap
from videogpt_jax.models import conditioning, cudnn_attention, mha, splash_attention

# Measured (jax 0.10.2, CPU): float32 errors ~5e-7 of the XLA path's norm, bfloat16 ~1e-2 (bf16 rounding of the
# outputs and of the probabilities before the value matmul, in different places); a wrong mask (causal full for
# the sparse pattern) is off by > 0.15.
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1.5e-2}


def qkv(length, batch=2, heads=2, dim=32, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return [jax.random.normal(key, (batch, length, heads, dim), jnp.float32).astype(dtype) for key in keys]


def value_and_grads(pattern):
  """`(out, (dq, dk, dv))` of a scalar loss that weights every output element differently."""
  def loss(q, k, v):
    out = pattern.attend(q, k, v)
    weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
    return (out.astype(jnp.float32) * weights).sum(), out
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("attn_type,shape,dim,dtype", [
    ("full", (4, 8, 8), 32, jnp.float32),
    ("full", (4, 8, 8), 64, jnp.bfloat16),
    # 32-token sparse blocks: 4 x 4 of them share one 128 x 128 kernel tile, so tiles are partially masked.
    ("sparse", (2, 16, 16), 64, jnp.float32),
    ("sparse", (4, 8, 8), 32, jnp.bfloat16),
])
def test_splash_matches_xla_forward_and_gradients(attn_type, shape, dim, dtype):
  xla = ap.make(attn_type, shape, block=32, local_blocks=4)
  splash = ap.make(attn_type, shape, block=32, local_blocks=4, kernel="splash_interpret")
  q, k, v = qkv(xla.length, dim=dim, dtype=dtype)
  grads, out = value_and_grads(splash)(q, k, v)
  ref_grads, ref = value_and_grads(xla)(q, k, v)
  assert out.shape == q.shape and out.dtype == dtype
  assert rel_err(out, ref) < TOL[dtype]
  for name, g, ref_g in zip("qkv", grads, ref_grads):
    assert g.dtype == dtype
    assert rel_err(g, ref_g) < TOL[dtype], f"d{name}"
  if attn_type == "sparse":  # the check can fail: the kernel with the wrong mask is far off
    assert rel_err(ap.make("full", shape).attend(q, k, v), ref) > 5 * TOL[dtype]


def test_splash_bidirectional_full():
  q, k, v = qkv(256, batch=1)
  out = jax.jit(ap.make("full", (2, 128), causal=False, kernel="splash_interpret").attend)(q, k, v)
  assert rel_err(out, ap.make("full", (2, 128), causal=False).attend(q, k, v)) < TOL[jnp.float32]


def test_splash_errors():
  q, k, v = qkv(256, batch=1)
  pattern = ap.make("full", (4, 8, 8), kernel="splash_interpret")
  with pytest.raises(ValueError, match="splash attention has no attention dropout.*attn_dropout=0"):
    pattern.attend(q, k, v, dropout_rate=0.1, dropout_rng=jax.random.PRNGKey(0), deterministic=False)
  pattern.attend(q, k, v, dropout_rate=0.1, deterministic=True)  # deterministic: no dropout asked for
  q, k, v = qkv(3 * 80, batch=1)
  with pytest.raises(ValueError, match="multiple of its 128-token tile, got L=240"):
    ap.make("full", (3, 8, 10), kernel="splash").attend(q, k, v)
  assert splash_attention.tile_size(1024) == 128
  with pytest.raises(ValueError, match="multiple of its 128-token tile, got L=64"):
    splash_attention.tile_size(64)
  with pytest.raises(ValueError, match="not available for attn_type='axial'"):
    ap.make("axial", (4, 8, 8), kernel="splash")


def test_gpt_forward_with_splash_equals_xla():
  """A whole prior (the paper configs' sparse pattern; full attention is covered by the kernel tests above)."""
  module, variables = tiny_gpt("sparse")
  codes = random_codes(module, batch=1)
  apply = lambda m: jax.jit(lambda v, c: m.apply(v, c))(variables, codes)  # noqa: E731
  logits = apply(module.clone(attn_kernel="splash_interpret"))
  ref = apply(module)
  assert rel_err(logits, ref) < 1e-5
  assert rel_err(ref, apply(module.clone(attn_type="full"))) > 1e-3  # the pattern shows in the logits


@pytest.mark.parametrize("q_len,kv_len,dim_v,dtype", [
    (256, 256, 24, jnp.float32),  # BAIR's shape in small: 2 tiles of keys, value head dim != query head dim
    (384, 64, 16, jnp.float32),  # 64 keys padded to a 128-key tile (a 32x32 frame's 8x8 features)
    (256, 128, 32, jnp.bfloat16),
])
def test_splash_cross_attention_matches_xla(q_len, kv_len, dim_v, dtype):
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  q = jax.random.normal(keys[0], (2, q_len, 2, 32)).astype(dtype)
  k = jax.random.normal(keys[1], (2, kv_len, 2, 32)).astype(dtype)
  v = jax.random.normal(keys[2], (2, kv_len, 2, dim_v)).astype(dtype)

  def run(attend):
    def loss(q, k, v):
      out = attend(q, k, v)
      weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
      return (out.astype(jnp.float32) * weights).sum(), out
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

  assert mha.cross_kernel("splash_interpret") is not mha.dot_product_attention
  assert mha.cross_kernel("cudnn") is mha.dot_product_attention  # no cross kernel of that name: the XLA path
  grads, out = run(mha.cross_kernel("splash_interpret"))
  ref_grads, ref = run(mha.dot_product_attention)
  assert out.shape == (2, q_len, 2, dim_v) and out.dtype == dtype
  assert rel_err(out, ref) < TOL[dtype]
  for name, g, ref_g in zip("qkv", grads, ref_grads):
    assert rel_err(g, ref_g) < TOL[dtype], f"d{name}"
  # The check can fail: keys in another order give other outputs.
  assert rel_err(out, mha.dot_product_attention(q, k[:, ::-1], v)) > 5 * TOL[dtype]


def test_frame_conditional_gpt_with_splash_equals_xla():
  """Self- and cross-attention both through splash; decoding (one query) stays on the XLA path."""
  module, variables = tiny_gpt("sparse", n_cond_frames=1, frame_shape=(16, 16), cond_width=8,
                               cond_blocks=(1, 1, 1, 1))
  codes = random_codes(module, batch=1)
  cond = conditioning.make_cond(frames=jax.random.uniform(jax.random.PRNGKey(2), (1, 1, 16, 16, 3)) - 0.5)
  apply = lambda m: jax.jit(lambda v, c: m.apply(v, c, cond))(variables, codes)  # noqa: E731
  splash = module.clone(attn_kernel="splash_interpret")
  ref = apply(module)
  assert rel_err(apply(splash), ref) < 1e-5
  # Decoding position 5 with a splash prior gives the full forward's logits there.
  prepared = splash.apply(variables, cond, 1, method=type(splash).prepare_decode)
  cache = splash.init_cache(1)
  flat = codes.reshape(1, -1)
  for pos in range(6):
    prev = flat[:, max(pos - 1, 0)]
    logits, cache = splash.apply(variables, prev, jnp.int32(pos), cache, prepared, method=type(splash).decode_step)
  assert rel_err(logits, ref.reshape(1, -1, module.n_codes)[:, 5]) < 1e-5


# ------------------------------------------------------------------------------------------------- cuDNN ----
def test_cudnn_constraints():
  ok = cudnn_attention.cudnn_unsupported
  assert ok([jnp.bfloat16] * 3, 64, dropout=False) == ""
  assert ok([jnp.float16] * 3, 128, dropout=False) == ""
  assert "bfloat16 or float16" in ok([jnp.float32] * 3, 64, dropout=False)
  assert "one dtype" in ok([jnp.bfloat16, jnp.bfloat16, jnp.float16], 64, dropout=False)
  assert "multiple of 8 and <= 128, got 36" in ok([jnp.bfloat16] * 3, 36, dropout=False)
  assert "<= 128, got 144" in ok([jnp.bfloat16] * 3, 144, dropout=False)  # BAIR's prior: 576 / 4 heads
  assert ok([jnp.bfloat16] * 3, 144, dropout=False, max_head_dim=cudnn_attention.MAX_HEAD_DIM["cudnn_sm90"]) == ""
  assert "<= 256, got 264" in ok([jnp.bfloat16] * 3, 264, dropout=False, max_head_dim=256)
  assert "no attention dropout" in ok([jnp.bfloat16] * 3, 64, dropout=True)


def test_cudnn_falls_back_to_xla_and_says_why(monkeypatch):
  logged = []
  monkeypatch.setattr(cudnn_attention, "_logged", set())
  monkeypatch.setattr(cudnn_attention.logging, "info", lambda msg, *args: logged.append(msg % args))
  q, k, v = qkv(256)  # float32: cuDNN cannot run it
  xla, cudnn = ap.make("full", (4, 8, 8)), ap.make("full", (4, 8, 8), kernel="cudnn")
  np.testing.assert_array_equal(cudnn.attend(q, k, v), xla.attend(q, k, v))
  cudnn.attend(q, k, v)
  assert len(logged) == 1 and "bfloat16 or float16" in logged[0] and "using the XLA attention" in logged[0]
  # bf16 with dropout falls back too, with the same dropout draws as the XLA path.
  q, k, v = qkv(256, dtype=jnp.bfloat16)
  kw = dict(dropout_rate=0.3, dropout_rng=jax.random.PRNGKey(3), deterministic=False)
  np.testing.assert_array_equal(cudnn.attend(q, k, v, **kw), xla.attend(q, k, v, **kw))
  assert len(logged) == 2 and "no attention dropout" in logged[1]


def test_splash_flop_count():
  """The tiles splash computes (what the compile tool adds to the compiler's flops, which omit Pallas kernels)."""
  full = ap.make("full", (2, 16, 16), kernel="splash")  # 512 tokens: 4 x 4 tiles, 10 on or below the diagonal
  assert splash_attention.computed_tiles(full) == 10
  assert splash_attention.computed_tiles(ap.make("full", (2, 16, 16), causal=False, kernel="splash")) == 16
  sparse = ap.make("sparse", (4, 16, 16), block=32, local_blocks=2, kernel="splash")
  n = sparse.length // 128
  brute = sparse.mask().reshape(n, 128, n, 128).any(axis=(1, 3)).sum()
  assert splash_attention.computed_tiles(sparse) == brute
  assert 0 < brute < n * (n + 1) // 2  # some tiles are skipped
  # forward QK^T and PV; dq kernel: QK^T, dO V^T, dS K; dkv kernel: QK^T, dO V^T, P^T dO, dS^T Q.
  per_tile = 128 * 128 * 2
  forward = per_tile * (64 + 32)
  backward = per_tile * (64 + 32 + 64) + per_tile * (64 + 32 + 32 + 64)
  assert splash_attention.train_flops(1, 128, 128, 64, 32, recompute=False) == forward + backward
  assert splash_attention.train_flops(3, 128, 128, 64, 32, recompute=True) == 3 * (2 * forward + backward)
