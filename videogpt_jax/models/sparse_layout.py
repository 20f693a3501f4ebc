"""Block layout of the original VideoGPT's block-sparse attention (DeepSpeed-style `StridedSparsityConfig`).

The sequence is the raster-flattened latent grid `shape = (T, H, W)`, cut into blocks of `block` tokens. Block
rows are indexed by their position in a *block grid* `block_shape`: the original walks the axes from the last
one, multiplying sizes until the product exceeds `block`, and replaces that tail of axes by one axis of
`product // block` blocks (`(8, 32, 32)`, block 32 -> `(8, 32)`: one block = one image row).

A block row attends to
  - local: the previous `num_local_blocks` blocks and itself (non-causal: `[r - n, r + n)`, the original's
    asymmetric window);
  - global: every block that differs from it in exactly one *leading* block-grid coordinate (not the last one),
    only earlier ones when causal ("the same block position in every earlier frame").
Inside an allowed block every token pair is allowed, except that a causal layout is ANDed with the dense causal
mask (the original's per-block `tril` on the diagonal blocks).

Everything here is static numpy built at trace time, except `layout_row`, which is the jnp row of one block for
KV-cached decoding with a traced position.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def check_sparse_args(shape: Sequence[int], block: int, num_local_blocks: int) -> None:
  """Raises ValueError for configurations the original's `StridedSparsityConfig` rejects."""
  if block < 1:
    raise ValueError(f"sparse attention: block must be >= 1, got {block}")
  if num_local_blocks < 1:
    raise ValueError(f"sparse attention: num_local_blocks must be >= 1, got {num_local_blocks}")
  seq_len = int(np.prod(shape))
  if seq_len % block:
    raise ValueError(f"sparse attention: sequence length prod(shape={tuple(shape)}) = {seq_len} is not divisible "
                     f"by block={block}")


def block_shape(shape: Sequence[int], block: int) -> tuple[int, ...]:
  """The original's `_compute_block_shape`: the block grid over which the strided (global) pattern is laid out."""
  shape = tuple(int(s) for s in shape)
  cum_prod, i = 1, 0
  for i in range(len(shape) - 1, -1, -1):
    cum_prod *= shape[i]
    if cum_prod > block:
      break
  if cum_prod % block:
    raise ValueError(f"sparse attention: the trailing axes of shape={shape} whose product first exceeds "
                     f"block={block} multiply to {cum_prod}, which is not a multiple of the block; the original "
                     "StridedSparsityConfig cannot lay out blocks on this shape")
  return (*shape[:i], cum_prod // block)


def block_layout(shape: Sequence[int], causal: bool = True, block: int = 32,
                 num_local_blocks: int = 4) -> np.ndarray:
  """Bool `(num_blocks, num_blocks)`: block row r may attend block column c."""
  check_sparse_args(shape, block, num_local_blocks)
  grid = block_shape(shape, block)
  nb = int(np.prod(grid))
  r = np.arange(nb)[:, None]
  c = np.arange(nb)[None, :]
  hi = r if causal else np.minimum(r + num_local_blocks, nb) - 1
  layout = (c >= r - num_local_blocks) & (c <= hi)
  coords = np.stack(np.unravel_index(np.arange(nb), grid), axis=-1)  # (nb, n_dim)
  same = coords[:, None, :] == coords[None, :, :]  # (nb, nb, n_dim)
  for d in range(len(grid) - 1):  # no strided attention over the last block-grid axis
    others = np.delete(same, d, axis=-1).all(axis=-1)
    if causal:
      others &= coords[None, :, d] <= coords[:, None, d]
    layout |= others
  return layout


@functools.lru_cache(maxsize=32)
def gather_table(shape: tuple[int, ...], causal: bool = True, block: int = 32,
                 num_local_blocks: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Per block row of `block_layout`, the allowed block columns padded to a common width (cached per config).

  Returns `(index, valid)`, both `(num_blocks, max_allowed)`: `index` int32 block columns in ascending order
  (padding repeats the row's own block so gathers stay in range), `valid` bool marks the real entries.
  """
  layout = block_layout(shape, causal, block, num_local_blocks)
  nb = layout.shape[0]
  width = int(layout.sum(axis=1).max())
  index = np.repeat(np.arange(nb, dtype=np.int32)[:, None], width, axis=1)
  valid = np.zeros((nb, width), bool)
  for row in range(nb):
    cols = np.flatnonzero(layout[row])
    index[row, :len(cols)] = cols
    valid[row, :len(cols)] = True
  index.flags.writeable = False
  valid.flags.writeable = False
  return index, valid


def layout_row(shape: Sequence[int], block_row: jax.Array, causal: bool = True, block: int = 32,
               num_local_blocks: int = 4) -> jax.Array:
  """Bool `(num_blocks,)`: row `block_row` (traced int) of `block_layout`, in O(num_blocks) work."""
  check_sparse_args(shape, block, num_local_blocks)
  grid = block_shape(shape, block)
  nb = int(np.prod(grid))
  r = jnp.asarray(block_row, jnp.int32)
  c = jnp.arange(nb, dtype=jnp.int32)
  hi = r if causal else jnp.minimum(r + num_local_blocks, nb) - 1
  row = (c >= r - num_local_blocks) & (c <= hi)
  strides = np.cumprod((grid[1:] + (1,))[::-1])[::-1]  # row-major strides of the block grid
  r_coords = [(r // int(s)) % g for s, g in zip(strides, grid)]
  c_coords = [(c // int(s)) % g for s, g in zip(strides, grid)]
  for d in range(len(grid) - 1):
    others = jnp.ones((nb,), bool)
    for e in range(len(grid)):
      if e != d:
        others &= c_coords[e] == r_coords[e]
    if causal:
      others &= c_coords[d] <= r_coords[d]
    row |= others
  return row
