"""Attention patterns of the GPT prior: masks against literal ports of the original, attention against a dense
masked-softmax reference, decode rows against the dense mask, causality, dropout, and memory at BAIR size."""
from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fixtures import rel_err
from videogpt_jax.models import attention_patterns as ap
from videogpt_jax.models import sparse_layout


# ---------------------------------------------------------------- literal port of the original's layout ----
class OriginalStridedSparsity:
  """`videogpt/attention.py::StridedSparsityConfig` written out with the original's loops (numpy, one head)."""

  def __init__(self, shape, causal, block, num_local_blocks):
    self.shape, self.causal, self.block, self.num_local_blocks = shape, causal, block, num_local_blocks
    self.seq_len = int(np.prod(shape))
    assert self.seq_len % block == 0
    self.num_blocks = self.seq_len // block
    n_dim = len(shape)
    cum_prod = 1
    for i in range(n_dim - 1, -1, -1):
      cum_prod *= shape[i]
      if cum_prod > block:
        break
    assert cum_prod % block == 0
    self.block_shape = (*shape[:i], cum_prod // block)
    bs = np.flip(np.array(self.block_shape))
    self.block_shape_cum = tuple(np.flip(np.cumprod(bs)[:-1])) + (1,)

  def _to_flat(self, idx):
    return sum(idx[i] * self.block_shape_cum[i] for i in range(len(self.block_shape)))

  def _to_unflat(self, flat):
    idx = []
    for i in range(len(self.block_shape)):
      idx.append(flat // self.block_shape_cum[i])
      flat %= self.block_shape_cum[i]
    return tuple(idx)

  def make_layout(self):
    nb = self.num_blocks
    layout = np.zeros((nb, nb), np.int64)
    for row in range(nb):
      end = min(row + self.num_local_blocks, nb)
      for col in range(max(0, row - self.num_local_blocks), row + 1 if self.causal else end):
        layout[row, col] = 1
    n_dim = len(self.block_shape)
    for row in range(nb):
      cur = self._to_unflat(row)
      for d in range(n_dim - 1):
        end = self.block_shape[d]
        for i in range(0, cur[d] + 1 if self.causal else end):
          new = list(cur)
          new[d] = i
          layout[row, self._to_flat(tuple(new))] = 1
    return layout

  def token_mask(self):
    """Dense equivalent of the block-sparse op: allowed blocks are all ones, causal diagonal blocks are tril."""
    layout, b = self.make_layout(), self.block
    mask = np.zeros((self.seq_len, self.seq_len), bool)
    for i in range(self.num_blocks):
      for j in range(self.num_blocks):
        if layout[i, j]:
          tile = np.ones((b, b), bool)
          if self.causal:
            assert i >= j
            if i == j:
              tile = np.tril(tile)
          mask[i * b:(i + 1) * b, j * b:(j + 1) * b] = tile
    return mask


def brute_mask(shape, attn_type, causal):
  """Full/axial masks by enumerating coordinate pairs."""
  coords = list(itertools.product(*[range(s) for s in shape]))
  n = len(coords)
  mask = np.zeros((n, n), bool)
  for i, ci in enumerate(coords):
    for j, cj in enumerate(coords):
      if causal and j > i:
        continue
      if attn_type == "full" or sum(a != b for a, b in zip(ci, cj)) <= 1:
        mask[i, j] = True
  return mask


def reference_attention(q, k, v, mask):
  """Dense masked softmax attention in float32 at highest precision."""
  hi = jax.lax.Precision.HIGHEST
  s = jnp.einsum("bqnd,bknd->bnqk", q, k, precision=hi) / np.sqrt(q.shape[-1])
  p = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1)
  return jnp.einsum("bnqk,bknd->bqnd", p, v, precision=hi)


def pat(attn_type, shape, causal=True, block=32, nlb=4):
  return ap.make(attn_type, shape, causal=causal, block=block, local_blocks=nlb)


def qkv(shape, batch=2, heads=2, dim=8, seed=0, dtype=jnp.float32):
  length = int(np.prod(shape))
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return [jax.random.normal(kk, (batch, length, heads, dim), dtype) for kk in keys]


# ------------------------------------------------------------------------------------------------ masks ----
@pytest.mark.parametrize("shape,block,nlb", [
    ((4, 8, 8), 32, 4), ((2, 4, 16), 32, 4), ((8, 16, 16), 32, 4), ((8, 16, 16), 16, 2), ((16, 8, 8), 32, 1),
    ((2, 2, 8, 8), 32, 4), ((2, 8, 4, 4), 16, 3), ((64,), 8, 4)])
@pytest.mark.parametrize("causal", [True, False])
def test_sparse_dense_mask_matches_original_port(shape, block, nlb, causal):
  orig = OriginalStridedSparsity(shape, causal, block, nlb)
  np.testing.assert_array_equal(sparse_layout.block_layout(shape, causal, block, nlb), orig.make_layout() == 1)
  np.testing.assert_array_equal(pat("sparse", shape, causal, block, nlb).mask(), orig.token_mask())


@pytest.mark.parametrize("causal", [True, False])
def test_sparse_block_layout_bair_size_matches_original_port(causal):
  shape = (8, 32, 32)
  orig = OriginalStridedSparsity(shape, causal, 32, 4)
  assert sparse_layout.block_shape(shape, 32) == orig.block_shape == (8, 32)
  layout = sparse_layout.block_layout(shape, causal, 32, 4)
  np.testing.assert_array_equal(layout, orig.make_layout() == 1)
  # The pattern is actually sparse at this size: at most 4 local + 8 same-position-in-earlier-frames blocks.
  assert layout.sum(axis=1).max() <= (12 if causal else 24)
  index, valid = sparse_layout.gather_table(shape, causal, 32, 4)
  assert index.shape == (256, layout.sum(axis=1).max())
  for row in range(len(layout)):
    np.testing.assert_array_equal(index[row][valid[row]], np.flatnonzero(layout[row]))
    assert (index[row][~valid[row]] == row).all()  # padding gathers the row's own block, masked out


def test_sparse_rejects_bad_shapes():
  with pytest.raises(ValueError, match="not divisible by block"):
    pat("sparse", (3, 5, 7))
  with pytest.raises(ValueError, match="not a multiple of the block"):
    pat("sparse", (32, 3, 12))  # L = 36 * 32, but the trailing product 36 is not
  with pytest.raises(ValueError, match="num_local_blocks"):
    pat("sparse", (4, 8, 8), nlb=0)


def test_bad_arguments():
  with pytest.raises(ValueError, match="attn_type"):
    pat("local", (2, 4, 4))
  q, k, v = qkv((2, 4, 4))
  with pytest.raises(ValueError, match="equal shape"):
    pat("full", (2, 4, 5)).attend(q, k, v)
  with pytest.raises(ValueError, match="dropout_rng"):
    pat("axial", (2, 4, 4)).attend(q, k, v, dropout_rate=0.1, deterministic=False)
  with pytest.raises(ValueError, match="attention kernel 'no_such_kernel' is not available"):
    ap.make("sparse", (4, 8, 8), kernel="no_such_kernel")


@pytest.mark.parametrize("attn_type", ["full", "axial"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 1, 6), (4, 3)])
def test_full_axial_dense_mask_brute_force(attn_type, causal, shape):
  np.testing.assert_array_equal(pat(attn_type, shape, causal).mask(), brute_mask(shape, attn_type, causal))


@pytest.mark.parametrize("attn_type,shape,block,nlb", [
    ("full", (3, 4, 5), 32, 4), ("axial", (3, 4, 5), 32, 4), ("axial", (2, 4, 4, 2), 32, 4),
    ("sparse", (4, 8, 8), 32, 4), ("sparse", (8, 16, 16), 32, 4), ("sparse", (2, 8, 4, 4), 16, 3)])
@pytest.mark.parametrize("causal", [True, False])
def test_decode_mask_equals_dense_row(attn_type, shape, block, nlb, causal):
  pattern = pat(attn_type, shape, causal, block, nlb)
  dense = pattern.mask()
  row = jax.jit(pattern.decode_mask)
  rows = jax.vmap(row)(jnp.arange(dense.shape[0], dtype=jnp.int32))
  assert rows.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(rows), dense)


def test_decode_mask_has_no_quadratic_intermediate():
  shape = (8, 32, 32)
  for attn_type in ap.ATTN_TYPES:
    hlo = jax.jit(pat(attn_type, shape).decode_mask).lower(jnp.int32(5)).as_text()
    assert "8192,8192" not in hlo.replace(" ", ""), attn_type


# --------------------------------------------------------------------------------------------- attention ----
CASES = [("full", (3, 4, 5), 32, 4), ("axial", (3, 4, 5), 32, 4), ("axial", (2, 4, 4, 2), 32, 4),
         ("sparse", (4, 8, 8), 32, 4), ("sparse", (8, 8, 8), 16, 2), ("sparse", (2, 8, 4, 4), 16, 3)]


@pytest.mark.parametrize("attn_type,shape,block,nlb", CASES)
@pytest.mark.parametrize("causal", [True, False])
def test_attend_matches_dense_reference_with_gradients(attn_type, shape, block, nlb, causal):
  q, k, v = qkv(shape, seed=1)
  ct = jax.random.normal(jax.random.PRNGKey(9), q.shape)
  pattern = pat(attn_type, shape, causal, block, nlb)
  mask = pattern.mask()

  def ours(q, k, v):
    return pattern.attend(q, k, v, precision=jax.lax.Precision.HIGHEST)

  out, vjp = jax.vjp(jax.jit(ours), q, k, v)
  ref, ref_vjp = jax.vjp(lambda q, k, v: reference_attention(q, k, v, mask), q, k, v)
  assert out.shape == q.shape and out.dtype == q.dtype
  assert rel_err(out, ref) <= 1e-5
  for g, g_ref, name in zip(vjp(ct), ref_vjp(ct), "qkv"):
    assert rel_err(g, g_ref) <= 1e-5, name


@pytest.mark.parametrize("causal", [True, False])
def test_full_chunked_path_matches_dense(monkeypatch, causal):
  monkeypatch.setattr(ap, "FULL_CHUNK_THRESHOLD", 32)
  monkeypatch.setattr(ap, "FULL_QUERY_CHUNK", 24)  # 80 tokens: chunks of 24, 24, 24, 8
  shape = (4, 4, 5)
  q, k, v = qkv(shape, seed=2)
  ct = jax.random.normal(jax.random.PRNGKey(3), q.shape)
  f = jax.jit(pat("full", shape, causal).attend)
  out, vjp = jax.vjp(f, q, k, v)
  mask = pat("full", shape, causal).mask()
  ref, ref_vjp = jax.vjp(lambda q, k, v: reference_attention(q, k, v, mask), q, k, v)
  assert rel_err(out, ref) <= 1e-5
  for g, g_ref in zip(vjp(ct), ref_vjp(ct)):
    assert rel_err(g, g_ref) <= 1e-5


@pytest.mark.parametrize("block", [16, 24, 80])
def test_full_block_causal_path_matches_dense(monkeypatch, block):
  """Query blocks that score only the keys up to their own end (16: 5 blocks; 24: uneven last block; 80: one)."""
  monkeypatch.setattr(ap, "FULL_QUERY_BLOCK", block)
  shape = (4, 4, 5)
  q, k, v = qkv(shape, seed=9)
  ct = jax.random.normal(jax.random.PRNGKey(3), q.shape)
  f = jax.jit(lambda q, k, v: pat("full", shape).attend(q, k, v, precision=jax.lax.Precision.HIGHEST))
  out, vjp = jax.vjp(f, q, k, v)
  ref, ref_vjp = jax.vjp(lambda q, k, v: reference_attention(q, k, v, pat("full", shape).mask()), q, k, v)
  assert rel_err(out, ref) <= 1e-5
  for g, g_ref in zip(vjp(ct), ref_vjp(ct)):
    assert rel_err(g, g_ref) <= 1e-5
  # Dropout: deterministic per key, different per key, unbiased.
  g = jax.jit(lambda rng: pat("full", shape).attend(q, k, jnp.ones_like(v), dropout_rate=0.3, dropout_rng=rng,
                                                    deterministic=False))
  np.testing.assert_array_equal(g(jax.random.PRNGKey(0)), g(jax.random.PRNGKey(0)))
  assert not np.allclose(g(jax.random.PRNGKey(0)), g(jax.random.PRNGKey(1)))
  mass = g(jax.random.PRNGKey(1))
  assert abs(float(mass.mean()) - 1.0) < 0.05 and float(mass.std()) > 0.05


@pytest.mark.parametrize("attn_type,shape,block,nlb", CASES[:1] + CASES[2:3] + CASES[4:5])
def test_causality(attn_type, shape, block, nlb):
  q, k, v = qkv(shape, batch=1, seed=4)
  length = q.shape[1]
  f = jax.jit(pat(attn_type, shape, True, block, nlb).attend)
  base = f(q, k, v)
  for p in (0, length // 3, length - 2):
    later = jnp.arange(length)[None, :, None, None] > p
    noise = jax.random.normal(jax.random.PRNGKey(p), q.shape)
    moved = f(q, jnp.where(later, k + 3 * noise, k), jnp.where(later, v - 3 * noise, v))
    np.testing.assert_array_equal(np.asarray(moved[:, :p + 1]), np.asarray(base[:, :p + 1]))
    assert not np.allclose(moved[:, p + 1:], base[:, p + 1:])


@pytest.mark.parametrize("attn_type,shape", [("full", (3, 4, 5)), ("axial", (3, 4, 5)), ("sparse", (4, 8, 8))])
def test_dropout(attn_type, shape):
  q, k, v = qkv(shape, seed=5)

  def f(rng, rate, deterministic, v):
    return pat(attn_type, shape).attend(q, k, v, dropout_rate=rate, dropout_rng=rng, deterministic=deterministic)

  f = jax.jit(f, static_argnums=(1, 2))
  a, b = f(jax.random.PRNGKey(0), 0.3, False, v), f(jax.random.PRNGKey(0), 0.3, False, v)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, f(jax.random.PRNGKey(1), 0.3, False, v))
  clean = pat(attn_type, shape).attend(q, k, v)
  assert not np.allclose(a, clean)
  np.testing.assert_allclose(f(jax.random.PRNGKey(0), 0.0, False, v), clean, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(f(jax.random.PRNGKey(0), 0.3, True, v), clean, rtol=1e-6, atol=1e-6)
  # Inverted dropout keeps the probabilities unbiased: with v = 1 the output is the kept mass / (1 - rate).
  mass = f(jax.random.PRNGKey(7), 0.3, False, jnp.ones_like(v))
  assert abs(float(mass.mean()) - 1.0) < 0.05
  assert float(mass.std()) > 0.05


def test_dropout_chunked_full(monkeypatch):
  monkeypatch.setattr(ap, "FULL_CHUNK_THRESHOLD", 32)
  monkeypatch.setattr(ap, "FULL_QUERY_CHUNK", 24)
  shape = (4, 4, 5)
  q, k, v = qkv(shape, seed=6)
  f = jax.jit(lambda rng: pat("full", shape).attend(q, k, jnp.ones_like(v), dropout_rate=0.3, dropout_rng=rng,
                                                    deterministic=False))
  np.testing.assert_array_equal(f(jax.random.PRNGKey(0)), f(jax.random.PRNGKey(0)))
  mass = f(jax.random.PRNGKey(1))
  assert abs(float(mass.mean()) - 1.0) < 0.05 and float(mass.std()) > 0.05


@pytest.mark.parametrize("attn_type,shape", [("full", (3, 4, 5)), ("axial", (3, 4, 5)), ("sparse", (4, 8, 8))])
def test_bfloat16_inputs(attn_type, shape):
  q, k, v = qkv(shape, seed=8)
  out = pat(attn_type, shape).attend(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert out.dtype == jnp.bfloat16
  ref = reference_attention(q, k, v, pat(attn_type, shape).mask())
  assert rel_err(out.astype(jnp.float32), ref) < 3e-2


# ------------------------------------------------------------------------------------- memory at BAIR size ----
def _largest_buffer_elems(hlo: str) -> int:
  largest = 0
  for dims in re.findall(r"\[([0-9,]+)\]", hlo):
    largest = max(largest, int(np.prod([int(d) for d in dims.split(",") if d])))
  return largest


@pytest.mark.slow
@pytest.mark.parametrize("attn_type", ["sparse", "axial", "full"])
def test_bair_size_memory_is_subquadratic(attn_type):
  shape, length = (8, 32, 32), 8192
  q, k, v = qkv(shape, batch=1, heads=4, dim=32, seed=10)

  def loss(q, k, v):
    return jnp.sum(pat(attn_type, shape).attend(q, k, v) ** 2)

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  compiled = step.lower(q, k, v).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  dense_scores = 4 * length * length * 4  # the (N, L, L) float32 scores of dense attention: 1 GiB
  largest = _largest_buffer_elems(compiled.as_text())
  print(f"{attn_type}: temp {temp / 2**20:.0f} MiB, largest buffer {largest} elements")
  assert temp < dense_scores // 2
  if attn_type == "full":  # query-chunked: one (N, chunk, L) score tensor live, rematerialised in the backward
    assert largest <= 4 * ap.FULL_QUERY_CHUNK * length
  else:  # linear in L: the widest row of scores is A * block = 384 keys (sparse) or T + H + W = 72 (axial)
    assert largest <= 4 * length * 384
  value, grads = step(q, k, v)
  assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)).all() for g in grads)


@pytest.mark.parametrize("rate", [0.3, 0.1, 0.001, 0.999])
def test_keep_mask_rate_and_independence(rate):
  """The 8-bit keep-mask keeps each element with the returned probability (rate rounded to 1/256), independently."""
  keep, keep_prob = ap.keep_mask(jax.random.PRNGKey(0), (3, 5, 1001), rate)
  assert keep.shape == (3, 5, 1001) and keep.dtype == jnp.bool_
  if 0 < round(rate * 256) < 256:
    assert keep_prob == (256 - round(rate * 256)) / 256 and abs(keep_prob - (1 - rate)) <= 1 / 512
  else:
    assert keep_prob == 1 - rate  # tiny and huge rates fall back to exact Bernoulli draws
  frac = float(keep.mean())
  assert abs(frac - keep_prob) < 4 * np.sqrt(keep_prob * (1 - keep_prob) / keep.size) + 1e-4
  # Neighbouring elements (which share a 32-bit word) are uncorrelated, and other keys give other masks.
  flat = np.asarray(keep, np.float32).ravel()
  if 0.01 < keep_prob < 0.99:
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.03
  other, _ = ap.keep_mask(jax.random.PRNGKey(1), (3, 5, 1001), rate)
  assert not np.array_equal(np.asarray(keep), np.asarray(other)) or keep_prob in (0.0, 1.0)


# ------------------------------------------------------------------------------------------ the interface ----
def test_patterns_are_hashable_values_built_from_the_config_name():
  a, b = pat("sparse", (4, 8, 8)), ap.make("sparse", [4, 8, 8])
  assert a == b and hash(a) == hash(b) and isinstance(a, ap.BlockSparse) and a.shape == (4, 8, 8)
  assert a != pat("sparse", (4, 8, 8), nlb=2) and {a: 1}[b] == 1
  assert isinstance(pat("full", (2, 3)), ap.Full) and isinstance(pat("axial", (2, 3)), ap.Axial)
  assert ap.ATTN_TYPES == ("full", "axial", "sparse")
  with pytest.raises(AttributeError):
    a.block = 16  # frozen: a module attribute and a jit static argument must not change


@pytest.mark.parametrize("attn_type,shape", [("full", (2, 8, 8)), ("full", (4, 32, 32)), ("axial", (4, 8, 8)),
                                             ("sparse", (4, 8, 8)), ("sparse", (8, 32, 32))])
def test_keys_per_query_counts_the_scores_attend_computes(attn_type, shape):
  p = pat(attn_type, shape)
  length = p.length
  if attn_type == "full" and length <= ap.FULL_CHUNK_THRESHOLD:  # query blocks score keys up to their end
    ends = np.minimum(np.arange(ap.FULL_QUERY_BLOCK, length + ap.FULL_QUERY_BLOCK, ap.FULL_QUERY_BLOCK), length)
    expected = float((np.diff(np.concatenate([[0], ends])) * ends).sum() / length)
  elif attn_type == "full":
    expected = float(length)
  elif attn_type == "axial":
    expected = float(sum(shape))
  else:  # every query block scores its gathered key blocks
    expected = float(sparse_layout.gather_table(shape, True, 32, 4)[0].shape[1] * 32)
  assert p.keys_per_query() == expected
  assert p.keys_per_query() >= p.mask().sum() / length  # masked-out scores computed too, never fewer
  assert p.flops(batch=2, width=64) == 4 * 2 * length * 64 * expected


def test_registered_kernel_is_what_attend_runs():
  calls = []

  def kernel(pattern, q, k, v, *, dropout_rate, dropout_rng, deterministic, precision):
    calls.append(pattern)
    return 2.0 * pattern._attend_xla(q, k, v, dropout_rate=dropout_rate, dropout_rng=dropout_rng,  # noqa: SLF001
                                     deterministic=deterministic, precision=precision)

  ap.register_kernel("sparse", "test_double", kernel)
  try:
    # Other kernels (splash, cudnn) are registered when their modules have been imported.
    assert ap.kernels("sparse")[0] == "xla" and "test_double" in ap.kernels("sparse")
    assert "test_double" not in ap.kernels("full")
    q, k, v = qkv((4, 8, 8))
    p = ap.make("sparse", (4, 8, 8), kernel="test_double")
    np.testing.assert_allclose(p.attend(q, k, v), 2.0 * pat("sparse", (4, 8, 8)).attend(q, k, v), rtol=1e-6)
    assert calls == [p]
    np.testing.assert_array_equal(p.mask(), pat("sparse", (4, 8, 8)).mask())  # the reference stays the same
  finally:
    ap._KERNELS.pop(("sparse", "test_double"))  # noqa: SLF001
  with pytest.raises(ValueError, match="register_kernel"):
    ap.register_kernel("sparse", "xla", kernel)
