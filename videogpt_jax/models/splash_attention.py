"""Pallas splash attention (TPU) as the `"splash"` kernel of the "full" and "sparse" attention patterns.

Importing this module registers (`attention_patterns.register_kernel`, and `mha.register_cross_kernel` for the
prior's unmasked cross-attention to the conditioning frames, whose scores the XLA path keeps in float32):
  - `"splash"`: the Mosaic TPU kernel (`jax.experimental.pallas.ops.tpu.splash_attention`). It lowers only for TPU,
    also from a CPU host (the ahead-of-time compile tool lowers a TPU program on a CPU host).
  - `"splash_interpret"`: the same kernel, same masks and tiles, run by the Pallas interpreter: the CPU reference
    check of the kernel's masks and gradients against `kernel="xla"`. Slow (seconds per call at 256 tokens);
    for tests, never for training.
Which one runs is the name the config picks, never the backend of the tracing process: a TPU program lowered on a
CPU host must get the real kernel.

Contract (that of `Pattern.attend`): q, k, v `(B, L, N, Dh)` -> `(B, L, N, Dh)` in q's dtype, scores scaled by
`1/sqrt(Dh)`, float32 softmax. Splash works per example on `(N, L, Dh)` with the head dimension minor, so q, k, v
are transposed to `(B, N, L, Dh)` and the kernel is vmapped over the batch. Splash does not scale its scores: q is
scaled (in float32, then cast back to q's dtype: exact for power-of-two head dims such as 64, one bf16 rounding of
q otherwise). Its matmuls accumulate in float32 and its softmax is float32 (online, tile by tile), as the XLA path;
it has no `precision` argument, so `precision` is ignored here.

Masks (static numpy, built at trace time):
  - "full": `CausalMask` (computed inside the kernel, no mask in memory) or `FullMask`.
  - "sparse": the pattern's own dense `mask()` (the original's strided layout ANDed with causality) as a
    `NumpyMask`, the same mask object for every head (`MultiHeadMask`). Splash classifies every 128x128 tile as
    empty (skipped: neither loaded nor computed), full, or partial (its mask tile is loaded); with the original's
    32-token blocks, 4x4 sparse blocks share one tile, so the kernel skips only tiles with no allowed block at all.
    The dense mask costs L^2 bytes of host memory once per pattern (64 MiB at BAIR's 8,192 tokens); the mask
    object is hashed by its pattern, not by those bytes, so the 3 tile analyses (forward, dq, dkv) that splash
    caches are found again by every layer.

Cross-attention: `FullMask((Lq, Lk))` (keys padded to a multiple of 128, the padding masked, where Lk is not; splash
computes keys in whole 128-wide tiles); the value head dim may differ from the query's (the prior's values keep the
conditioning width: 60 per head against 144 for queries and keys at BAIR's sizes).

Tiles: `BlockSizes` of 128 (queries and keys) for the forward and both backward kernels (splash's custom VJP runs
the dq and dkv Pallas kernels). L must be a multiple of the tile (a `runlocal` prior's 32 tokens are not: use
kernel="xla").

Dropout: splash has no attention dropout, so `dropout_rate > 0` outside deterministic mode is an error; configs
that use it set `attn_dropout=0` (the sparse paper configs already do: the original's sparse kernel had none).

Sharding: a Pallas call is opaque to XLA's SPMD partitioner. Under a mesh context (`jax.set_mesh`, as the
trainers use) the kernel runs inside `jax.shard_map` with the batch split as `sharding.LOGICAL_AXIS_RULES` splits
"batch" and the heads as it splits "heads" (mesh axes that do not divide a dimension are dropped), each device
running splash on its own examples and heads; without a mesh it is a plain call (so a program over several devices
must be traced under `jax.set_mesh`: Mosaic refuses to be partitioned automatically).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Hashable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from videogpt_jax import sharding
from videogpt_jax.models import attention_patterns, mha

TILE = 128  # splash's default tile; the MXU is 128 wide (v5e) or a multiple of it.
KERNELS = ("splash", "splash_interpret")


@dataclasses.dataclass(eq=False)
class _PatternMask(splash_mask.NumpyMask):
  """A `NumpyMask` of `pattern.mask()`, hashed and compared by its (frozen, hashable) pattern, not its L^2 bytes."""
  key: Hashable = None

  def __hash__(self):
    return hash((type(self), self.key))

  def __eq__(self, other):
    return isinstance(other, _PatternMask) and self.key == other.key


def tile_size(length: int) -> int:
  """The splash tile for L tokens, 128 (splash computes keys in whole 128-lane tiles); raises ValueError unless it
  divides L."""
  if length % TILE:
    raise ValueError(f"splash attention needs a sequence length that is a multiple of its {TILE}-token tile, got "
                     f"L={length}; use kernel='xla' for this latent grid")
  return TILE


@functools.lru_cache(maxsize=16)
def _multi_head_mask(pattern: attention_patterns.Pattern, heads: int) -> splash_mask.MultiHeadMask:
  """The splash mask of `pattern` for `heads` heads (numpy only: cached across traces and layers)."""
  shape = (pattern.length, pattern.length)
  if pattern.attn_type == "full":
    mask = splash_mask.CausalMask(shape) if pattern.causal else splash_mask.FullMask(shape)
  elif pattern.attn_type == "sparse":
    key = dataclasses.replace(pattern, kernel="xla")  # the mask does not depend on the kernel name
    mask = _PatternMask(pattern.mask(), key=key)
  else:
    raise ValueError(f"splash attention has no mask for attn_type={pattern.attn_type!r}")
  return splash_mask.MultiHeadMask([mask] * heads)


def _splash_heads(mask_of, q, k, v, *, interpret: bool) -> jax.Array:
  """Splash over `(B, N, L, Dh)` inputs (the local shard, under shard_map), one kernel call per example;
  `mask_of(heads)` is the `MultiHeadMask` for the local number of heads."""
  tq, tk = tile_size(q.shape[2]), tile_size(k.shape[2])
  blocks = splash_kernel.BlockSizes(block_q=tq, block_kv=tk, block_kv_compute=tk, block_q_dkv=tq, block_kv_dkv=tk,
                                    block_kv_dkv_compute=tk, block_q_dq=tq, block_kv_dq=tk)
  # Built per trace: it holds the tile tables as jax arrays, which must not outlive the trace that made them
  # (the costly tile analysis is cached inside splash, keyed by the mask).
  kernel = splash_kernel.make_splash_mha(mask_of(q.shape[1]), block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                         interpret=interpret)
  return jax.vmap(kernel)(q, k, v)


@functools.lru_cache(maxsize=16)
def _cross_mask(q_len: int, kv_len: int, kv_valid: int, heads: int) -> splash_mask.MultiHeadMask:
  """Every query sees the first `kv_valid` of `kv_len` keys (the rest is padding up to a whole key tile)."""
  if kv_valid == kv_len:
    mask = splash_mask.FullMask((q_len, kv_len))
  else:
    valid = np.broadcast_to(np.arange(kv_len)[None, :] < kv_valid, (q_len, kv_len))
    mask = _PatternMask(np.ascontiguousarray(valid), key=("cross", q_len, kv_len, kv_valid))
  return splash_mask.MultiHeadMask([mask] * heads)


def _call(mask_of, q, k, v, *, interpret: bool) -> jax.Array:
  """Scales q, runs splash on `(B, N, L, Dh)` views of `(B, L, N, Dh)` q, k, v (split over the context mesh's batch
  and head axes), returns `(B, Lq, N, Dv)` in q's dtype."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  dtype = q.dtype
  q = (q.astype(jnp.float32) * scale).astype(dtype)
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # (B, N, L, Dh)
  fn = functools.partial(_splash_heads, mask_of, interpret=interpret)
  mesh, spec = _mesh_spec(q.shape)
  if mesh is not None:
    fn = jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
  return jnp.swapaxes(fn(q, k, v), 1, 2).astype(dtype)


def _mesh_spec(shape: tuple[int, ...]) -> tuple[jax.sharding.AbstractMesh | None, P]:
  """The context mesh and the `(B, N, L, Dh)` spec of splash's inputs on it (batch and heads split as the rules
  split them, less the mesh axes that do not divide them); `(None, P())` without a mesh or on one device."""
  spec = sharding.context_spec(("batch", "heads", "length", "kv"), shape, what="splash attention inputs")
  return (None, P()) if spec is None else (jax.sharding.get_abstract_mesh(), spec)


def splash_attend(pattern, q, k, v, *, dropout_rate, dropout_rng, deterministic, precision, interpret=False):
  """`Pattern.attend` by splash attention; see the module docstring. Registered as "splash"/"splash_interpret"."""
  del dropout_rng, precision  # no dropout (checked below); splash's matmuls have no precision argument
  if dropout_rate > 0 and not deterministic:
    raise ValueError(f"splash attention has no attention dropout (got dropout_rate={dropout_rate} with "
                     "deterministic=False); set attn_dropout=0 in the config to use attn_kernel='splash', or use "
                     "attn_kernel='xla'")
  tile_size(pattern.length)
  return _call(functools.partial(_multi_head_mask, pattern), q, k, v, interpret=interpret)


def splash_cross_attend(q, k, v, *, interpret=False):
  """Unmasked attention `(B, Lq, N, Dk), (B, Lk, N, Dk), (B, Lk, N, Dv) -> (B, Lq, N, Dv)` by splash (see the module
  docstring); the prior's cross-attention under attn_kernel "splash"/"splash_interpret"."""
  kv_len = k.shape[1]
  pad = -kv_len % TILE  # splash computes keys in whole 128-wide tiles: pad, and mask the padding
  if pad:
    k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (k, v))
  return _call(functools.partial(_cross_mask, q.shape[1], kv_len + pad, kv_len), q, k, v, interpret=interpret)


def computed_tiles(pattern) -> int:
  """Tiles `(tile x tile)` of a self-attention pattern that splash computes (every tile its mask does not leave
  empty) for one head of one example."""
  tile = tile_size(pattern.length)
  mask = _multi_head_mask(pattern, 1).masks[0]
  if isinstance(mask, splash_mask.CausalMask):
    n = pattern.length // tile
    return n * (n + 1) // 2
  if isinstance(mask, splash_mask.FullMask):
    return (pattern.length // tile) ** 2
  n = pattern.length // tile
  return int(np.asarray(mask.array).reshape(n, tile, n, tile).any(axis=(1, 3)).sum())


def train_flops(tiles: int, tile_q: int, tile_kv: int, dim_qk: int, dim_v: int, *, recompute: bool) -> float:
  """Matmul flops of one head of one example through splash's forward and its two backward kernels, over `tiles`
  computed tiles: forward `QK^T`, `PV`; dq kernel `QK^T`, `dO V^T`, `dS K`; dkv kernel `QK^T`, `dO V^T`, `P^T dO`,
  `dS^T Q`; `recompute`: the forward once more (a rematerialised block)."""
  forward = 2 * dim_qk + 2 * dim_v
  backward = (4 * dim_qk + 2 * dim_v) + (4 * dim_qk + 4 * dim_v)
  return float(tiles * tile_q * tile_kv * (forward * (2 if recompute else 1) + backward))


for _attn_type in ("full", "sparse"):
  attention_patterns.register_kernel(_attn_type, "splash", functools.partial(splash_attend, interpret=False),
                                     heads_major=True)
  attention_patterns.register_kernel(_attn_type, "splash_interpret",
                                     functools.partial(splash_attend, interpret=True), heads_major=True)
mha.register_cross_kernel("splash", splash_cross_attend)
mha.register_cross_kernel("splash_interpret", functools.partial(splash_cross_attend, interpret=True))
