"""Multi-head self- and cross-attention of the GPT prior, with a KV-cache decode path.

Layouts: token sequences `(B, L, C)` in raster order over the latent grid `shape = (t, h, w)`; per-head tensors
`(B, L, heads, d)`. Heads are split head-major (channel `= head * d + j`), as in the original, so imported
projection weights need no permutation.
"""
from __future__ import annotations

from typing import Any, Callable

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax.models import attention_patterns
from videogpt_jax.models.initializers import torch_uniform

# Added to masked scores instead of -inf: exp underflows to exactly 0 in float32, and a row can never be fully
# masked (every query sees itself), so the result equals the -inf version without NaN hazards.
_MASKED = -1e30


def normal_init(std: float):
  """N(0, std^2), the init the original sets explicitly on its attention projections."""
  return nn.initializers.normal(stddev=std)


def dense(features: int, names: tuple[str | None, str | None], kernel_init, *, use_bias: bool = False,
          bias_init=None, dtype: Any = jnp.float32, name: str | None = None) -> nn.Dense:
  """`nn.Dense` with logical axis names on its kernel (and bias), float32 parameters, `dtype` compute."""
  kwargs = {}
  if use_bias:
    kwargs["bias_init"] = nn.with_logical_partitioning(bias_init or nn.initializers.zeros, (names[1],))
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.with_logical_partitioning(kernel_init, names), name=name, **kwargs)


def split_heads(x: jax.Array, heads: int) -> jax.Array:
  """`(B, L, heads * d)` -> `(B, L, heads, d)`, head-major."""
  return einops.rearrange(x, "b l (h d) -> b l h d", h=heads)


def merge_heads(x: jax.Array) -> jax.Array:
  """`(B, L, heads, d)` -> `(B, L, heads * d)`."""
  return einops.rearrange(x, "b l h d -> b l (h d)")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Plain attention with a float32 softmax. q `(B, Lq, H, dk)`, k `(B, Lk, H, dk)`, v `(B, Lk, H, dv)`.

  mask broadcasts to `(B, H, Lq, Lk)` (True = attend). Returns `(B, Lq, H, dv)` in v's dtype.
  """
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(q.shape[-1])
  if mask is not None:
    scores = jnp.where(mask, scores, _MASKED)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


# Cross-attention kernels by name: `fn(q, k, v) -> out` with q `(B, Lq, N, Dk)`, k `(B, Lk, N, Dk)`, v
# `(B, Lk, N, Dv)`, unmasked, scores scaled by `1/sqrt(Dk)`, out `(B, Lq, N, Dv)` in q's dtype. A prior's
# `attn_kernel` picks its cross-attention too where a kernel of that name is registered ("splash" on TPU:
# `splash_attention.py`); any other name runs `dot_product_attention`.
CrossAttendFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
_CROSS_KERNELS: dict[str, CrossAttendFn] = {}


def register_cross_kernel(kernel: str, fn: CrossAttendFn) -> None:
  """Makes `fn` the cross-attention of priors whose `attn_kernel` is `kernel`."""
  if kernel == "xla":
    raise ValueError("register_cross_kernel: 'xla' is the built-in dot_product_attention")
  _CROSS_KERNELS[kernel] = fn


def cross_kernel(kernel: str) -> CrossAttendFn:
  """The cross-attention that `kernel` runs: a registered kernel, else the XLA `dot_product_attention`."""
  return _CROSS_KERNELS.get(kernel, dot_product_attention)


class Projection(nn.Module):
  """A bias-free projection's `(in, features)` kernel (the parameter `nn.Dense` would hold under the same name),
  returned rather than applied: several projections of one input then run as one matmul over their stacked
  kernels, which reads the input once instead of once per projection."""
  features: int
  names: tuple[str | None, str | None]
  kernel_init: Any

  @nn.compact
  def __call__(self, in_features: int) -> jax.Array:
    return self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.names),
                      (in_features, self.features), jnp.float32)


class SelfAttention(nn.Module):
  """Causal multi-head self-attention over the raster-flattened latent grid.

  q/k/v projections have no bias (init N(0, 1/sqrt(hidden))) and run as one matmul over their stacked kernels
  (the parameters stay the original's `w_qs`, `w_ks`, `w_vs`); the output projection `fc` has a bias
  (weight init N(0, 1/sqrt(hidden * n_layer))). The mask (full / axial / block-sparse) and the attention kernel are the
  `pattern`'s job; the same weights serve every pattern.

  Attributes:
    hidden_dim: model width C.
    heads: number of heads (C must divide by it).
    n_layer: depth of the stack (scales the output projection's init).
    pattern: the attention pattern over the latent grid (`attention_patterns.make`), causal.
    attn_dropout: dropout rate on the attention probabilities (every pattern; the original's sparse kernel
      ignored it, so a sparse prior reproducing it uses 0).
    dtype: compute dtype.
  """
  hidden_dim: int
  heads: int
  n_layer: int
  pattern: attention_patterns.Pattern
  attn_dropout: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    if not self.pattern.causal:
      raise ValueError("the prior's self-attention needs a causal pattern (KV-cached decoding relies on it)")
    c = self.hidden_dim
    self.w_qs, self.w_ks, self.w_vs = (Projection(c, ("embed", "heads"), normal_init(1 / np.sqrt(c)))
                                       for _ in range(3))
    self.fc = dense(c, ("heads", "embed"), normal_init(1 / np.sqrt(c * self.n_layer)), use_bias=True,
                    bias_init=torch_uniform(c), dtype=self.dtype)

  @property
  def head_dim(self) -> int:
    return self.hidden_dim // self.heads

  def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x `(B, L, C)` -> q, k, v `(B, L, heads, d)`, from one matmul whose output puts q|k|v outermost (each a
    contiguous slice), laid out `(B, heads, L, d)` underneath for a kernel that works in that layout."""
    c = x.shape[-1]
    kernel = jnp.stack([self.w_qs(c), self.w_ks(c), self.w_vs(c)]).astype(self.dtype)  # (3, C, C)
    x = x.astype(self.dtype)
    if self.pattern.heads_major:
      qkv = jnp.einsum("blc,kcnd->kbnld", x, kernel.reshape(3, c, self.heads, -1))
      return tuple(jnp.swapaxes(t, 1, 2) for t in qkv)
    return tuple(split_heads(t, self.heads) for t in jnp.einsum("blc,kcf->kblf", x, kernel))

  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """x `(B, L, C)` in raster order, `L = t*h*w` -> `(B, L, C)`."""
    q, k, v = self._qkv(x)
    rate = self.attn_dropout
    rng = self.make_rng("dropout") if (not deterministic and rate > 0) else None
    out = self.pattern.attend(q, k, v, dropout_rate=rate, dropout_rng=rng, deterministic=deterministic)
    return self.fc(merge_heads(out.astype(self.dtype)))

  def decode(self, x: jax.Array, cache: dict[str, jax.Array], pos: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One decoding step at raster position `pos` (traced int).

    Args:
      x: `(B, 1, C)`, the input token at `pos`.
      cache: `{"k": (B, heads, d, L), "v": (B, heads, L, d)}`; entries after `pos` are never read.
      pos: scalar int.

    Returns:
      `(B, 1, C)` and the cache with this step's key and value written at `pos`.
    """
    q, k, v = self._qkv(x)
    length = cache["v"].shape[2]
    # Attend to the cache as it was (positions < pos) plus this step's own key/value, and write the cache only
    # for the output: when the updated cache is also read, XLA copies every layer's whole cache at every step.
    # The layouts make both products plain per-head matmuls, (1, d) x (d, L) and (1, L) x (L, d), for the same
    # reason (any other layout transposes the whole cache each step).
    mask = self.pattern.decode_mask(pos)  # (L,), includes pos itself
    mask = mask & (jnp.arange(length) != pos)
    scale = 1.0 / np.sqrt(q.shape[-1])
    old_scores = jnp.einsum("bqhd,bhdk->bhqk", q, cache["k"].astype(q.dtype)).astype(jnp.float32) * scale
    new_score = jnp.einsum("bqhd,bqhd->bhq", q, k).astype(jnp.float32)[..., None] * scale  # (B, H, 1, 1)
    probs = jax.nn.softmax(jnp.concatenate([jnp.where(mask, old_scores, _MASKED), new_score], -1), axis=-1)
    probs = probs.astype(q.dtype)
    out = (jnp.einsum("bhqk,bhkd->bqhd", probs[..., :length], cache["v"].astype(q.dtype))
           + jnp.einsum("bhq,bqhd->bqhd", probs[..., length], v))
    # XLA updates a loop-carried buffer in place only if the write is data-dependent on the buffer's reads;
    # otherwise it copies every layer's whole cache at every step (5-50x slower decoding, measured on CPU).
    # `0 * out` is that dependency: XLA does not fold it to zero (it is NaN for non-finite `out`), and adding
    # it leaves k and v unchanged whenever the attention output is finite.
    tie = 0.0 * out[:, :, :1, :1].astype(k.dtype)
    new_k = jnp.transpose(k + tie, (0, 2, 3, 1)).astype(cache["k"].dtype)  # (B, heads, d, 1)
    new_v = jnp.transpose(v + tie, (0, 2, 1, 3)).astype(cache["v"].dtype)  # (B, heads, 1, d)
    cache = {"k": jax.lax.dynamic_update_slice(cache["k"], new_k, (0, 0, 0, pos)),
             "v": jax.lax.dynamic_update_slice(cache["v"], new_v, (0, 0, pos, 0))}
    return self.fc(merge_heads(out)), cache


class CrossAttention(nn.Module):
  """Non-causal multi-head attention from the token stream to the frame-conditioning features.

  As in the original: keys have the query's head dim (`w_ks: cond_dim -> hidden`), values keep the conditioning
  width (`w_vs: cond_dim -> cond_dim`, head dim `cond_dim / heads`) and `fc: cond_dim -> hidden`. No mask, no
  attention dropout.

  Attributes:
    hidden_dim: model width C.
    cond_dim: width of the conditioning features (240 in the original).
    heads: number of heads (both C and cond_dim must divide by it).
    n_layer: depth of the stack (scales the output projection's init).
    dtype: compute dtype.
    kernel: the prior's `attn_kernel` (see `cross_kernel`).
  """
  hidden_dim: int
  cond_dim: int
  heads: int
  n_layer: int
  dtype: Any = jnp.float32
  kernel: str = "xla"

  def setup(self):
    c, e = self.hidden_dim, self.cond_dim
    self.w_qs = dense(c, ("embed", "heads"), normal_init(1 / np.sqrt(c)), dtype=self.dtype)
    self.w_ks = dense(c, ("embed", "heads"), normal_init(1 / np.sqrt(e)), dtype=self.dtype)
    self.w_vs = dense(e, ("embed", "heads"), normal_init(1 / np.sqrt(e)), dtype=self.dtype)
    self.fc = dense(c, ("heads", "embed"), normal_init(1 / np.sqrt(c * self.n_layer)), use_bias=True,
                    bias_init=torch_uniform(e), dtype=self.dtype)

  def kv(self, cond: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cond `(B, Lc, cond_dim)` -> keys `(B, Lc, heads, C/heads)`, values `(B, Lc, heads, cond_dim/heads)`."""
    return split_heads(self.w_ks(cond), self.heads), split_heads(self.w_vs(cond), self.heads)

  def __call__(self, x: jax.Array, kv: tuple[jax.Array, jax.Array], single_token: bool = False) -> jax.Array:
    """x `(B, L, C)`, kv from `kv()` (computed once per conditioning input) -> `(B, L, C)`; `single_token`: x is
    one decoding step."""
    q = split_heads(self.w_qs(x), self.heads)
    k, v = kv
    attend = dot_product_attention if single_token else cross_kernel(self.kernel)
    return self.fc(merge_heads(attend(q, k, v)))
