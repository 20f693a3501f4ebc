"""Self-attention patterns of the VideoGPT prior (full, axial, block-sparse) as small hashable objects.

Sequences are the raster-flattened (t-major) latent grid `shape = (T, H, W)`, `L = T * H * W`; q, k, v are
`(B, L, N, Dh)`. Only the mask differs between patterns (the weights of the GPT are shared). Every pattern has one
interface, whose parts must agree exactly:
  - `mask()`: the `(L, L)` bool mask, a brute-force reference for tests and small models;
  - `attend(q, k, v, ...)`: the attention itself, with memory linear in L where the pattern allows (block-sparse
    gathers only the allowed key blocks, axial scores each axis separately, full attention chunks its queries at
    large L);
  - `decode_mask(pos)`: one row of the mask for KV-cached decoding, for a traced position, in O(L) work;
  - `keys_per_query()` / `flops(batch, width)`: the work `attend` does (masked scores it computes included).
`make(attn_type, shape, ...)` is the one place a config's `attn_type` string becomes a pattern.

Patterns:
  - `Full` ("full"): key j <= query i (causal) or everything.
  - `Axial` ("axial"): keys that differ from the query in at most one axis of `shape` (its row along T, H or W),
    and come no later in raster order when causal. The original only has non-causal axial attention (inside the
    VQ-VAE, as a *sum* of three separate softmaxes); for the prior we define one joint softmax over the union of
    the three rows, with the query itself counted once.
  - `BlockSparse` ("sparse"): the original's DeepSpeed `StridedSparsityConfig` (see `sparse_layout.py`), with
    its `block` size and `local_blocks` count. The original's sparse kernel ignores `attn_dropout`; here dropout
    applies to every pattern, so a config that reproduces the original's sparse prior sets `attn_dropout=0`.

Kernels: `attend` runs the XLA implementations below (`kernel="xla"`, every backend). An accelerator kernel (say
a Pallas one on TPU) implements the same contract for a pattern and registers it under a name with
`register_kernel`; a pattern built with `kernel=<name>` then dispatches to it. `mask` and `decode_mask` stay the
reference the kernel is tested against. Kernels register when their module is imported (`gpt.py` imports them):
"splash"/"splash_interpret" (`splash_attention.py`, TPU) and "cudnn"/"cudnn_sm90" (`cudnn_attention.py`, GPU).

Attention dropout rounds its rate to a multiple of 1/256 (see `keep_mask`: a quarter of the random draws).

Logits are computed in float32 (`preferred_element_type`), scaled by `1/sqrt(Dh)`, softmaxed in float32; the
probabilities are cast back to the value dtype before the value matmul (as the original's `type_as`), and the
output has q's dtype.
"""
from __future__ import annotations

import dataclasses
import math
import string
from typing import Callable, ClassVar, Sequence

import einops
import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax.models import sparse_layout

# Above this many tokens full attention runs query chunk by query chunk (each chunk rematerialised in the
# backward pass), so no (L, L) score tensor is ever live: at 8192 tokens one head's scores alone are 256 MiB.
FULL_CHUNK_THRESHOLD = 2048
FULL_QUERY_CHUNK = 512
# Up to that length causal full attention runs in query blocks of this many tokens, each scoring only the keys
# up to its own last query: about half the work of a masked (L, L) product, and score tensors small enough to
# stay in cache (4x faster forward + backward than `jax.nn.dot_product_attention` at 1,024 tokens on CPU).
FULL_QUERY_BLOCK = 128

_NEG_INF = float(np.finfo(np.float32).min)


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




# ---------------------------------------------------------------------------------------------- patterns ----

# `fn(pattern, q, k, v, *, dropout_rate, dropout_rng, deterministic, precision) -> (B, L, N, Dh)`, registered per
# (attn_type, kernel name).
AttendFn = Callable[..., jax.Array]
_KERNELS: dict[tuple[str, str], AttendFn] = {}
_HEADS_MAJOR: set[tuple[str, str]] = set()


def register_kernel(attn_type: str, kernel: str, fn: AttendFn, *, heads_major: bool = False) -> None:
  """Makes `fn` the `attend` of patterns of `attn_type` built with `kernel=kernel` (e.g. a TPU Pallas kernel).

  `heads_major`: the kernel works on `(B, N, L, Dh)` internally, so callers should make q, k and v in that layout
  and pass `(B, L, N, Dh)` views of it (`Pattern.heads_major`): the two transposes then cancel, where producing
  `(B, L, N, Dh)` and transposing it for the kernel copies every operand and gradient through HBM.
  """
  if attn_type not in PATTERNS or kernel == "xla":
    raise ValueError(f"register_kernel: attn_type must be one of {ATTN_TYPES} and the name not 'xla', got "
                     f"{attn_type!r}, {kernel!r}")
  _KERNELS[(attn_type, kernel)] = fn
  if heads_major:
    _HEADS_MAJOR.add((attn_type, kernel))


def kernels(attn_type: str) -> tuple[str, ...]:
  """Names of the `attend` implementations available for `attn_type` ("xla" first)."""
  return ("xla", *sorted(k for t, k in _KERNELS if t == attn_type))


@dataclasses.dataclass(frozen=True)
class Pattern:
  """Causal or bidirectional self-attention over the raster-flattened grid `shape`; see the module docstring.

  Attributes:
    shape: the latent grid `(T, H, W)` (any number of axes).
    causal: query i only sees keys j <= i (the prior is causal).
    kernel: the `attend` implementation, "xla" or a name given to `register_kernel`.
  """
  shape: tuple[int, ...]
  causal: bool = True
  kernel: str = "xla"

  attn_type: ClassVar[str] = ""

  def __post_init__(self):
    shape = tuple(int(s) for s in self.shape)
    if not shape or any(s < 1 for s in shape):
      raise ValueError(f"attention shape must be a non-empty tuple of positive sizes, got {self.shape}")
    object.__setattr__(self, "shape", shape)
    object.__setattr__(self, "causal", bool(self.causal))
    if self.kernel not in kernels(self.attn_type):
      raise ValueError(f"attention kernel {self.kernel!r} is not available for attn_type={self.attn_type!r} "
                       f"(have {kernels(self.attn_type)}; accelerator kernels are added with register_kernel)")

  @property
  def length(self) -> int:
    return int(np.prod(self.shape))

  @property
  def heads_major(self) -> bool:
    """Whether the kernel works on `(B, N, L, Dh)` (see `register_kernel`); the XLA path does not."""
    return (self.attn_type, self.kernel) in _HEADS_MAJOR

  def _order(self, xp, i, j):
    return j <= i if self.causal else xp.ones(np.broadcast_shapes(np.shape(i), np.shape(j)), bool)

  def mask(self) -> np.ndarray:
    """Bool `(L, L)`: `mask[i, j]` is True when query i may attend key j (raster order)."""
    return self._order(np, np.arange(self.length)[:, None], np.arange(self.length)[None, :])

  def decode_mask(self, pos: jax.Array) -> jax.Array:
    """Bool `(L,)`: row `pos` (a possibly traced int) of `mask()`, without building anything `(L, L)`."""
    return self._order(jnp, jnp.asarray(pos, jnp.int32), jnp.arange(self.length, dtype=jnp.int32))

  def keys_per_query(self) -> float:
    """Mean number of keys whose score `attend` computes per query (masked ones included)."""
    raise NotImplementedError

  def flops(self, batch: int, width: int) -> float:
    """Forward matmul flops of the score and value products: `4 B L width keys_per_query`, width = N * Dh."""
    return 4.0 * batch * self.length * width * self.keys_per_query()

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, *, dropout_rate: float = 0.0,
             dropout_rng: jax.Array | None = None, deterministic: bool = True, precision=None) -> jax.Array:
    """Self-attention of this pattern. q, k, v `(B, L, N, Dh)`, any float dtype (softmax is float32).

    Args:
      dropout_rate, dropout_rng, deterministic: dropout on the attention probabilities when not deterministic.
      precision: matmul precision for the score and value products.

    Returns:
      `(B, L, N, Dh)` in q's dtype.
    """
    if q.ndim != 4 or q.shape[1] != self.length or k.shape != q.shape or v.shape != q.shape:
      raise ValueError(f"attend expects q, k, v of equal shape (B, L={self.length}, N, Dh) for shape={self.shape}; "
                       f"got q {q.shape}, k {k.shape}, v {v.shape}")
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    kw = dict(dropout_rate=dropout_rate, dropout_rng=dropout_rng, deterministic=deterministic, precision=precision)
    if self.kernel == "xla":
      return self._attend_xla(q, k, v, **kw)
    return _KERNELS[(self.attn_type, self.kernel)](self, q, k, v, **kw)

  def _attend_xla(self, q, k, v, *, dropout_rate, dropout_rng, deterministic, precision) -> jax.Array:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Full(Pattern):
  """Every earlier key (causal) or every key."""
  attn_type: ClassVar[str] = "full"

  def keys_per_query(self) -> float:
    # Up to FULL_CHUNK_THRESHOLD, causal attention scores per query block the keys up to the block's end; above
    # it every query chunk scores all keys, masked.
    length = self.length
    if not self.causal or length > FULL_CHUNK_THRESHOLD:
      return float(length)
    block = min(FULL_QUERY_BLOCK, length)
    ends = np.minimum(np.arange(block, length + block, block), length)
    sizes = np.diff(np.concatenate([[0], ends]))
    return float((sizes * ends).sum() / length)

  def _attend_xla(self, q, k, v, *, dropout_rate, dropout_rng, deterministic, precision):
    return _full_attention(q, k, v, causal=self.causal, rate=dropout_rate, rng=dropout_rng,
                           deterministic=deterministic, precision=precision)


@dataclasses.dataclass(frozen=True)
class Axial(Pattern):
  """The query's rows along every axis of `shape` (one joint softmax), earlier keys only when causal."""
  attn_type: ClassVar[str] = "axial"

  def mask(self) -> np.ndarray:
    length = self.length
    coords = np.unravel_index(np.arange(length), self.shape)
    n_diff = np.zeros((length, length), np.int8)
    for c in coords:
      n_diff += c[:, None] != c[None, :]
    return (n_diff <= 1) & super().mask()

  def decode_mask(self, pos: jax.Array) -> jax.Array:
    pos = jnp.asarray(pos, jnp.int32)
    j = jnp.arange(self.length, dtype=jnp.int32)
    strides = np.cumprod((self.shape[1:] + (1,))[::-1])[::-1]
    n_diff = jnp.zeros((self.length,), jnp.int32)
    for s, size in zip(strides, self.shape):
      n_diff += ((j // int(s)) % size != (pos // int(s)) % size).astype(jnp.int32)
    return (n_diff <= 1) & super().decode_mask(pos)

  def keys_per_query(self) -> float:
    return float(sum(self.shape))

  def _attend_xla(self, q, k, v, *, dropout_rate, dropout_rng, deterministic, precision):
    return _axial_attention(q, k, v, shape=self.shape, causal=self.causal, rate=dropout_rate, rng=dropout_rng,
                            deterministic=deterministic, precision=precision)


@dataclasses.dataclass(frozen=True)
class BlockSparse(Pattern):
  """The original's strided block-sparse layout over blocks of `block` tokens (see `sparse_layout`).

  Attributes (beyond `Pattern`'s):
    block: tokens per block (the original's 32).
    local_blocks: earlier blocks every block row attends besides itself (the original's `num_local_blocks`, 4).
  """
  block: int = 32
  local_blocks: int = 4

  attn_type: ClassVar[str] = "sparse"

  def __post_init__(self):
    super().__post_init__()
    sparse_layout.check_sparse_args(self.shape, self.block, self.local_blocks)
    sparse_layout.block_shape(self.shape, self.block)

  def mask(self) -> np.ndarray:
    layout = sparse_layout.block_layout(self.shape, self.causal, self.block, self.local_blocks)
    tokens = np.repeat(np.repeat(layout, self.block, axis=0), self.block, axis=1)
    return tokens & super().mask()

  def decode_mask(self, pos: jax.Array) -> jax.Array:
    pos = jnp.asarray(pos, jnp.int32)
    row = sparse_layout.layout_row(self.shape, pos // self.block, self.causal, self.block, self.local_blocks)
    return jnp.repeat(row, self.block, total_repeat_length=self.length) & super().decode_mask(pos)

  def keys_per_query(self) -> float:
    index, _ = sparse_layout.gather_table(self.shape, self.causal, self.block, self.local_blocks)
    return float(index.shape[1] * self.block)

  def _attend_xla(self, q, k, v, *, dropout_rate, dropout_rng, deterministic, precision):
    return _sparse_attention(q, k, v, shape=self.shape, causal=self.causal, block=self.block,
                             num_local_blocks=self.local_blocks, rate=dropout_rate, rng=dropout_rng,
                             deterministic=deterministic, precision=precision)


PATTERNS: dict[str, type[Pattern]] = {"full": Full, "axial": Axial, "sparse": BlockSparse}
ATTN_TYPES = tuple(PATTERNS)


def make(attn_type: str, shape: Sequence[int], *, causal: bool = True, block: int = 32, local_blocks: int = 4,
         kernel: str = "xla") -> Pattern:
  """The pattern named `attn_type` ("full", "axial" or "sparse"); `block`/`local_blocks` only apply to "sparse"."""
  if attn_type not in PATTERNS:
    raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r}")
  extra = dict(block=int(block), local_blocks=int(local_blocks)) if attn_type == "sparse" else {}
  return PATTERNS[attn_type](tuple(shape), causal, kernel, **extra)
