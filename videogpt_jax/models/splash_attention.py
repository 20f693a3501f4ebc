"""Pallas splash attention (TPU) as the `"splash"` kernel of the "full" and "sparse" attention patterns.

Importing this module registers (`attention_patterns.register_kernel`):
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

Tiles: `BlockSizes` of `min(128, L)` for the forward and both backward kernels (splash's custom VJP runs the dq and
dkv Pallas kernels). L must be a multiple of the tile.

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
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from videogpt_jax import sharding
from videogpt_jax.models import attention_patterns

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
  """The splash tile for L tokens, `min(128, L)`; raises ValueError if it does not divide L."""
  tile = min(TILE, length)
  if length % tile:
    raise ValueError(f"splash attention needs a sequence length that is a multiple of its {tile}-token tile, got "
                     f"L={length}; use kernel='xla' for this latent grid")
  return tile


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


def _splash_heads(pattern, q, k, v, *, interpret: bool) -> jax.Array:
  """Splash over `(B, N, L, Dh)` inputs (the local shard, under shard_map), one kernel call per example."""
  tile = tile_size(pattern.length)
  blocks = splash_kernel.BlockSizes(block_q=tile, block_kv=tile, block_kv_compute=tile, block_q_dkv=tile,
                                    block_kv_dkv=tile, block_kv_dkv_compute=tile, block_q_dq=tile, block_kv_dq=tile)
  # Built per trace: it holds the tile tables as jax arrays, which must not outlive the trace that made them
  # (the costly tile analysis is cached inside splash, keyed by the mask).
  kernel = splash_kernel.make_splash_mha(_multi_head_mask(pattern, q.shape[1]), block_sizes=blocks, head_shards=1,
                                         q_seq_shards=1, interpret=interpret)
  return jax.vmap(kernel)(q, k, v)


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
  scale = 1.0 / math.sqrt(q.shape[-1])
  q = (q.astype(jnp.float32) * scale).astype(q.dtype)
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # (B, N, L, Dh)
  fn = functools.partial(_splash_heads, pattern, interpret=interpret)
  mesh, spec = _mesh_spec(q.shape)
  if mesh is not None:
    fn = jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
  out = fn(q, k, v)
  return jnp.swapaxes(out, 1, 2).astype(q.dtype)


for _attn_type in ("full", "sparse"):
  attention_patterns.register_kernel(_attn_type, "splash", functools.partial(splash_attend, interpret=False))
  attention_patterns.register_kernel(_attn_type, "splash_interpret",
                                     functools.partial(splash_attend, interpret=True))
