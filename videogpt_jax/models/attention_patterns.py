"""Self-attention patterns of the VideoGPT prior (full, axial, block-sparse) as pure functions.

Sequences are the raster-flattened (t-major) latent grid `shape = (T, H, W)`, `L = T * H * W`; q, k, v are
`(B, L, N, Dh)`. Only the mask differs between patterns (the weights of the GPT are shared), so each pattern is
given three ways that must agree exactly:
  - `dense_mask`: the `(L, L)` bool mask, a brute-force reference for tests and small models;
  - `attend`: the attention itself, with memory linear in L where the pattern allows (block-sparse gathers only
    the allowed key blocks, axial scores each axis separately, full attention chunks its queries at large L);
  - `decode_mask`: one row of the mask for KV-cached decoding, for a traced position, in O(L) work.

Patterns (`attn_type`):
  - `full`: key j <= query i (causal) or everything.
  - `axial`: keys that differ from the query in at most one axis of `shape` (its row along T, H or W), and come
    no later in raster order when causal. The original only has non-causal axial attention (inside the VQ-VAE,
    as a *sum* of three separate softmaxes); for the prior we define one joint softmax over the union of the
    three rows, with the query itself counted once.
  - `sparse`: the original's DeepSpeed `StridedSparsityConfig` (see `sparse_layout.py`). The original ignores
    `attn_dropout` for sparse attention; `attend` applies whatever `dropout_rate` it is given, so a caller that
    wants the original's behaviour passes 0.

Attention dropout rounds its rate to a multiple of 1/256 (see `keep_mask`: a quarter of the random draws).

Logits are computed in float32 (`preferred_element_type`), scaled by `1/sqrt(Dh)`, softmaxed in float32; the
probabilities are cast back to the value dtype before the value matmul (as the original's `type_as`), and the
output has q's dtype.
"""
from __future__ import annotations

import math
import string
from typing import Sequence

import einops
import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax.models import sparse_layout

ATTN_TYPES = ("full", "axial", "sparse")

# Above this many tokens full attention runs query chunk by query chunk (each chunk rematerialised in the
# backward pass), so no (L, L) score tensor is ever live: at 8192 tokens one head's scores alone are 256 MiB.
FULL_CHUNK_THRESHOLD = 2048
FULL_QUERY_CHUNK = 512
# Up to that length causal full attention runs in query blocks of this many tokens, each scoring only the keys
# up to its own last query: about half the work of a masked (L, L) product, and score tensors small enough to
# stay in cache (4x faster forward + backward than `jax.nn.dot_product_attention` at 1,024 tokens on CPU).
FULL_QUERY_BLOCK = 128

_NEG_INF = float(np.finfo(np.float32).min)


def _check(shape: Sequence[int], attn_type: str, block: int, num_local_blocks: int) -> tuple[int, ...]:
  shape = tuple(int(s) for s in shape)
  if not shape or any(s < 1 for s in shape):
    raise ValueError(f"attention shape must be a non-empty tuple of positive sizes, got {shape}")
  if attn_type not in ATTN_TYPES:
    raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r}")
  if attn_type == "sparse":
    sparse_layout.check_sparse_args(shape, block, num_local_blocks)
    sparse_layout.block_shape(shape, block)
  return shape


# ------------------------------------------------------------------------------------------------ masks ----


def dense_mask(shape: Sequence[int], attn_type: str, causal: bool = True, block: int = 32,
               num_local_blocks: int = 4) -> np.ndarray:
  """Bool `(L, L)`: `mask[i, j]` is True when query i may attend key j (raster order)."""
  shape = _check(shape, attn_type, block, num_local_blocks)
  length = int(np.prod(shape))
  i = np.arange(length)[:, None]
  j = np.arange(length)[None, :]
  order = j <= i if causal else np.ones((length, length), bool)
  if attn_type == "full":
    return order
  if attn_type == "axial":
    coords = np.unravel_index(np.arange(length), shape)
    n_diff = np.zeros((length, length), np.int8)
    for c in coords:
      n_diff += c[:, None] != c[None, :]
    return (n_diff <= 1) & order
  layout = sparse_layout.block_layout(shape, causal, block, num_local_blocks)
  tokens = np.repeat(np.repeat(layout, block, axis=0), block, axis=1)
  return tokens & order


def decode_mask(shape: Sequence[int], attn_type: str, pos: jax.Array, causal: bool = True, block: int = 32,
                num_local_blocks: int = 4) -> jax.Array:
  """Bool `(L,)`: row `pos` (a possibly traced int) of `dense_mask`, without building anything `(L, L)`."""
  shape = _check(shape, attn_type, block, num_local_blocks)
  length = int(np.prod(shape))
  pos = jnp.asarray(pos, jnp.int32)
  j = jnp.arange(length, dtype=jnp.int32)
  order = j <= pos if causal else jnp.ones((length,), bool)
  if attn_type == "full":
    return order
  if attn_type == "axial":
    strides = np.cumprod((shape[1:] + (1,))[::-1])[::-1]
    n_diff = jnp.zeros((length,), jnp.int32)
    for s, size in zip(strides, shape):
      n_diff += ((j // int(s)) % size != (pos // int(s)) % size).astype(jnp.int32)
    return (n_diff <= 1) & order
  row = sparse_layout.layout_row(shape, pos // block, causal, block, num_local_blocks)
  return jnp.repeat(row, block, total_repeat_length=length) & order


# --------------------------------------------------------------------------------------------- attention ----


def keep_mask(rng: jax.Array, shape: Sequence[int], rate: float) -> tuple[jax.Array, float]:
  """A dropout keep-mask of `shape` and its keep probability, from 8 random bits per element.

  Attention dropout draws one number per score, and on CPU the threefry draws cost more than the attention
  itself. Four 8-bit draws per 32-bit word quarter that work; the price is a rate rounded to 1/256 (0.3 drops
  77/256 = 0.3008). The caller divides by the returned keep probability, so dropout stays unbiased. Rates that
  round to 0 or 1 use `jax.random.bernoulli`.
  """
  threshold = round(rate * 256)
  if not 0 < threshold < 256:
    return jax.random.bernoulli(rng, 1.0 - rate, tuple(shape)), 1.0 - rate
  n = math.prod(shape)
  words = jax.random.bits(rng, (-(-n // 4),), jnp.uint32)
  draws = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:n].reshape(tuple(shape))
  return draws >= threshold, (256 - threshold) / 256


def _dropout(probs: jax.Array, rate: float, rng: jax.Array | None, deterministic: bool) -> jax.Array:
  if deterministic or rate == 0.0:
    return probs
  if rng is None:
    raise ValueError("attention dropout needs dropout_rng when deterministic=False and dropout_rate > 0")
  keep, keep_prob = keep_mask(rng, probs.shape, rate)
  return jnp.where(keep, probs / keep_prob, 0.0).astype(probs.dtype)


def _logits(spec: str, q: jax.Array, k: jax.Array, precision) -> jax.Array:
  scale = 1.0 / math.sqrt(q.shape[-1])
  return jnp.einsum(spec, q, k, precision=precision, preferred_element_type=jnp.float32) * scale


def _masked_attention(q, k, v, mask, *, rate, rng, deterministic, precision):
  """Plain softmax attention. q `(B, Lq, N, Dh)`, k/v `(B, Lk, N, Dh)`, mask broadcastable to `(Lq, Lk)`."""
  logits = _logits("bqnd,bknd->bnqk", q, k, precision)
  probs = jax.nn.softmax(jnp.where(mask, logits, _NEG_INF), axis=-1)
  probs = _dropout(probs, rate, rng, deterministic).astype(v.dtype)
  out = jnp.einsum("bnqk,bknd->bqnd", probs, v, precision=precision, preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def _block_causal_attention(q, k, v, *, rate, rng, deterministic, precision):
  """Causal attention by query blocks: block i (queries [i*c, (i+1)*c)) scores keys [0, (i+1)*c) only."""
  length = q.shape[1]
  block = min(FULL_QUERY_BLOCK, length)
  no_dropout = deterministic or rate == 0.0
  outs = []
  for i, start in enumerate(range(0, length, block)):
    stop = min(start + block, length)
    mask = np.arange(stop)[None, :] <= np.arange(start, stop)[:, None]  # static (stop - start, stop)
    block_rng = None if no_dropout else jax.random.fold_in(rng, i)
    outs.append(_masked_attention(q[:, start:stop], k[:, :stop], v[:, :stop], mask, rate=rate, rng=block_rng,
                                  deterministic=deterministic, precision=precision))
  return jnp.concatenate(outs, axis=1)


def _full_attention(q, k, v, *, causal, rate, rng, deterministic, precision):
  length = q.shape[1]
  no_dropout = deterministic or rate == 0.0
  if length <= FULL_CHUNK_THRESHOLD:
    if causal:
      return _block_causal_attention(q, k, v, rate=rate, rng=rng, deterministic=deterministic, precision=precision)
    if no_dropout and precision is None:
      return jax.nn.dot_product_attention(q, k, v, is_causal=causal).astype(q.dtype)
    mask = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None] if causal else True
    return _masked_attention(q, k, v, mask, rate=rate, rng=rng, deterministic=deterministic, precision=precision)

  # Query chunks under a scan: each step sees all keys (masked), the scan keeps only one chunk's scores live and
  # the rematerialised body keeps the backward pass from storing them, so memory is O(chunk * L) not O(L^2).
  # (An unrolled loop over chunks could skip the keys above the diagonal, but XLA then keeps every chunk's
  # scores live at once.)
  chunk = min(FULL_QUERY_CHUNK, length)
  n_chunks = -(-length // chunk)
  pad = n_chunks * chunk - length
  q_chunks = einops.rearrange(jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))), "b (c i) n d -> c b i n d", i=chunk)
  key_pos = jnp.arange(length)

  @jax.checkpoint
  def step(carry, xs):
    c, qc = xs
    mask = key_pos[None, :] <= (c * chunk + jnp.arange(chunk))[:, None] if causal else True
    chunk_rng = None if no_dropout else jax.random.fold_in(rng, c)
    out = _masked_attention(qc, k, v, mask, rate=rate, rng=chunk_rng, deterministic=deterministic,
                            precision=precision)
    return carry, out

  _, outs = jax.lax.scan(step, None, (jnp.arange(n_chunks), q_chunks))
  return einops.rearrange(outs, "c b i n d -> b (c i) n d")[:, :length]


def _axial_attention(q, k, v, *, shape, causal, rate, rng, deterministic, precision):
  """Joint softmax over the query's rows along every axis; per-axis scores `(B, *shape, N, S_a)`, no `(L, L)`."""
  batch, _, heads, dim = q.shape
  n_ax = len(shape)
  q, k, v = (x.reshape(batch, *shape, heads, dim) for x in (q, k, v))
  # einsum letters: b, n, d name batch, heads, head dim; s the key position along one axis; then the grid axes.
  axes = "".join(ch for ch in string.ascii_lowercase if ch not in "bnds")[:n_ax]
  grid = "b" + axes + "nd"
  logits, specs = [], []
  for a, size in enumerate(shape):
    key_grid = "b" + axes[:a] + "s" + axes[a + 1:] + "nd"
    specs.append(key_grid)
    scores = _logits(f"{grid},{key_grid}->b{axes}ns", q, k, precision)
    qpos = np.arange(size)[:, None]
    kpos = np.arange(size)[None, :]
    mask = kpos <= qpos if causal else np.ones((size, size), bool)
    if a > 0:  # the query itself is already a key of the first axis' row
      mask = mask & (kpos != qpos)
    mask = mask.reshape((1,) + tuple(size if e == a else 1 for e in range(n_ax)) + (1, size))
    logits.append(jnp.where(mask, scores, _NEG_INF))
  probs = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1)
  probs = _dropout(probs, rate, rng, deterministic).astype(v.dtype)
  out = 0.0
  for p, key_grid in zip(jnp.split(probs, np.cumsum(shape)[:-1], axis=-1), specs):
    out = out + jnp.einsum(f"b{axes}ns,{key_grid}->{grid}", p, v, precision=precision,
                           preferred_element_type=jnp.float32)
  return out.reshape(batch, -1, heads, dim).astype(q.dtype)


def _sparse_attention(q, k, v, *, shape, causal, block, num_local_blocks, rate, rng, deterministic, precision):
  """Each query block attends only its gathered allowed key blocks: scores `(B, nb, N, block, A * block)`."""
  index, valid = sparse_layout.gather_table(shape, causal, block, num_local_blocks)  # (nb, A), static
  num_blocks, width = index.shape
  key_tok = (index[:, :, None] * block + np.arange(block)).reshape(num_blocks, width * block)
  key_ok = np.repeat(valid, block, axis=1)
  query_tok = np.arange(num_blocks * block).reshape(num_blocks, block)
  mask = key_ok[:, None, :]
  if causal:
    mask = mask & (key_tok[:, None, :] <= query_tok[:, :, None])  # (nb, block, A * block)
  mask = mask[None, :, None]  # broadcast over batch and heads

  qb, kb, vb = (einops.rearrange(x, "b (r i) n d -> b r i n d", i=block) for x in (q, k, v))
  kg, vg = (einops.rearrange(x[:, index], "b r a j n d -> b r (a j) n d") for x in (kb, vb))
  logits = _logits("brind,brjnd->brnij", qb, kg, precision)
  probs = jax.nn.softmax(jnp.where(mask, logits, _NEG_INF), axis=-1)
  probs = _dropout(probs, rate, rng, deterministic).astype(v.dtype)
  out = jnp.einsum("brnij,brjnd->brind", probs, vg, precision=precision, preferred_element_type=jnp.float32)
  return einops.rearrange(out, "b r i n d -> b (r i) n d").astype(q.dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, shape: Sequence[int], attn_type: str, causal: bool = True,
           block: int = 32, num_local_blocks: int = 4, dropout_rate: float = 0.0,
           dropout_rng: jax.Array | None = None, deterministic: bool = True, precision=None) -> jax.Array:
  """Self-attention of pattern `attn_type` over the raster-flattened grid `shape`.

  Args:
    q, k, v: `(B, L, N, Dh)` with `L = prod(shape)`; any float dtype (bf16 fine: softmax is float32).
    shape: the latent grid `(T, H, W)` (any number of axes).
    attn_type: "full", "axial" or "sparse".
    causal: whether query i only sees keys j <= i (the prior is causal).
    block, num_local_blocks: block-sparse layout (original defaults 32 and 4).
    dropout_rate, dropout_rng, deterministic: dropout on the attention probabilities when not deterministic.
    precision: matmul precision for the score and value products.

  Returns:
    `(B, L, N, Dh)` in q's dtype.
  """
  shape = _check(shape, attn_type, block, num_local_blocks)
  length = int(np.prod(shape))
  if q.ndim != 4 or q.shape[1] != length or k.shape != q.shape or v.shape != q.shape:
    raise ValueError(f"attend expects q, k, v of equal shape (B, L={length}, N, Dh) for shape={shape}; got "
                     f"q {q.shape}, k {k.shape}, v {v.shape}")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
  kw = dict(rate=dropout_rate, rng=dropout_rng, deterministic=deterministic, precision=precision)
  if attn_type == "full":
    return _full_attention(q, k, v, causal=causal, **kw)
  if attn_type == "axial":
    return _axial_attention(q, k, v, shape=shape, causal=causal, **kw)
  return _sparse_attention(q, k, v, shape=shape, causal=causal, block=block, num_local_blocks=num_local_blocks,
                           **kw)
