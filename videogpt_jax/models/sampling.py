"""Autoregressive sampling from the GPT prior with per-layer KV caches, the whole loop compiled once.

One token per step in raster order `(t, h, w)`. Before the loop: the frame encoder and every layer's
cross-attention keys/values (computed once, as the original caches them at step 0). In the loop (`lax.scan`
inside one `jax.jit`): `GPT.decode_step` writes the step's key/value into fixed-size per-layer caches with
`lax.dynamic_update_slice`, in place (see `SelfAttention.decode` for the cache layouts, keys `(B, heads, d, L)` and
values `(B, heads, L, d)`, and why). Compiled functions are cached per (module, static arguments), so repeated
calls do not retrace.

`sample(..., prefix=codes)` teacher-forces the first positions: their codes are copied from `prefix` (through the
same KV caches) and only the rest are drawn, which is how `sliding_window` continues a video past the prior's clip.

`step_logits` runs the same decode loop teacher-forced with given codes and returns every step's logits; it
equals the full forward up to float rounding, which is how the cached path is tested.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax import sharding, visualize
from videogpt_jax.models import conditioning, platforms
from videogpt_jax.models import gpt as gpt_lib
from videogpt_jax.models.gpt import GPT

_NEG_INF = -1e30


def filter_logits(logits: jax.Array, top_k: int | None = None, top_p: jax.Array | float | None = None
                  ) -> jax.Array:
  """Sets logits outside the top-k / nucleus (top-p) support to a large negative value. logits `(B, K)`.

  Nucleus: the smallest set of most likely tokens whose probability reaches `top_p` (the most likely token is
  always kept; tokens tied with the last kept one are kept too).
  """
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, _NEG_INF, logits)
  if top_p is not None:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = mass_before < top_p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, _NEG_INF, logits)
  return logits


def _decode_scan(gpt: GPT, variables: Any, batch: int, cond: dict[str, jax.Array], step: Callable, init: Any,
                 xs: Any):
  """Runs `step(carry, pos, x, logits) -> (carry, prev_codes, y)` over all raster positions with KV caches.

  `cond` is the conditioning mapping; `xs` holds one entry per position (leading axis L), or is None. A prior with
  scanned layers decodes in its loop form (one token per step: nothing to gain from the scan).
  """
  if gpt.scan_layers:
    gpt, variables = gpt.as_loop(), gpt_lib.unstack_layers(variables, gpt.layers)
  prepared = gpt.apply(variables, cond, batch, method=GPT.prepare_decode)

  def body(state, inputs):
    cache, prev, carry = state
    pos, x = inputs
    logits, cache = gpt.apply(variables, prev, pos, cache, prepared, method=GPT.decode_step)
    carry, prev, y = step(carry, pos, x, logits)
    return (cache, prev, carry), y

  # Under a mesh the caches split as the batch and heads do (nothing else would lay them out: they are made here).
  cache = jax.tree.map(lambda x: sharding.constrain(x, CACHE_AXES, "the KV cache"), gpt.init_cache(batch))
  state = (cache, jnp.zeros((batch,), jnp.int32), init)
  positions = jnp.arange(gpt.seq_len, dtype=jnp.int32)
  _, ys = jax.lax.scan(body, state, (positions, xs))
  return ys


# On CPU, samples are decoded in groups whose KV caches fit in the last-level cache: every step reads the whole
# cache, and once it spills to memory each sample's step costs more (measured on a 2-core CPU with a 32 MiB L3,
# 1,024-token benchmark prior, 6 MiB of cache per sample: 0.29 ms per step for one sample, 0.58 ms for two,
# 1.22 ms for three, 1.55 ms for four). Accelerators decode the whole batch at once.
CPU_GROUP_CACHE_BYTES = 16 * 2**20


# Logical axes of both cache layouts, keys `(B, heads, d, L)` and values `(B, heads, L, d)`.
CACHE_AXES = ("batch", "heads", None, None)


def kv_cache_bytes(gpt: GPT, n: int = 1) -> int:
  """Bytes of the per-layer KV caches for `n` samples."""
  return n * gpt.layers * 2 * gpt.hidden_dim * gpt.seq_len * jnp.dtype(gpt.dtype).itemsize


def kv_cache_bytes_per_device(gpt: GPT, n: int) -> int:
  """Bytes of the caches of `n` samples that each device holds under the context mesh (all of them without
  one): the caches split as `CACHE_AXES` split them."""
  spec = sharding.context_spec(CACHE_AXES, (n, gpt.heads, gpt.head_dim, gpt.seq_len), "the KV cache")
  mesh = jax.sharding.get_abstract_mesh()
  shards = 1
  for axes in spec or ():
    for name in () if axes is None else (axes,) if isinstance(axes, str) else axes:
      shards *= mesh.shape[name]
  return kv_cache_bytes(gpt, n) // shards


def default_group_size(gpt: GPT, n: int, platform: str) -> int:
  """Samples decoded together on `platform`: all `n` on accelerators; on CPU as many as fit
  `CPU_GROUP_CACHE_BYTES` (>= 1)."""
  if platforms.check(platform) != "cpu":
    return n
  return max(1, min(n, CPU_GROUP_CACHE_BYTES // kv_cache_bytes(gpt)))


def gumbel_noise(rng: jax.Array, positions: jax.Array, sample_ids: jax.Array, n_codes: int) -> jax.Array:
  """Gumbel noise `(len(positions), len(sample_ids), n_codes)` for sampling by the Gumbel-max trick.

  Sample i at position p uses the key `fold_in(fold_in(rng, p), i)`, so its draw does not depend on which other
  samples share its batch or group.
  """
  def one(p, i):
    return jax.random.gumbel(jax.random.fold_in(jax.random.fold_in(rng, p), i), (n_codes,), jnp.float32)
  return jax.vmap(lambda p: jax.vmap(lambda i: one(p, i))(sample_ids))(positions)


@functools.lru_cache(maxsize=64)
def _compiled_sampler(gpt: GPT, n: int, top_k: int | None, use_top_p: bool, greedy: bool, group: int,
                      prefix_len: int = 0) -> Callable:
  n_groups = -(-n // group)
  padded = n_groups * group

  def run(variables, rng, cond, temperature, top_p, prefix):
    def decode_group(args):
      first, group_cond, group_prefix = args
      sample_ids = first + jnp.arange(group, dtype=jnp.int32)

      def step(carry, pos, _, logits):
        logits = filter_logits(logits, top_k, top_p if use_top_p else None)
        if greedy:
          tokens = jnp.argmax(logits, axis=-1)
        else:  # Gumbel-max: a draw from softmax(logits / temperature)
          noise = gumbel_noise(rng, pos[None], sample_ids, gpt.n_codes)[0]
          tokens = jnp.argmax(logits.astype(jnp.float32) / temperature + noise, axis=-1)
        tokens = tokens.astype(jnp.int32)
        if prefix_len:  # known positions are copied, not drawn
          known = jax.lax.dynamic_index_in_dim(group_prefix, jnp.minimum(pos, prefix_len - 1), 1, keepdims=False)
          tokens = jnp.where(pos < prefix_len, known, tokens)
        return carry, tokens, tokens

      return _decode_scan(gpt, variables, group, group_cond, step, None, None)  # (L, group)

    def grouped(x):  # (n, ...) -> (n_groups, group, ...), padding the last group with copies of sample 0
      x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (padded - n, *x.shape[1:]))]) if padded > n else x
      return x.reshape(n_groups, group, *x.shape[1:])

    firsts = jnp.arange(n_groups, dtype=jnp.int32) * group
    tokens = jax.lax.map(decode_group, (firsts, jax.tree.map(grouped, cond),
                                        grouped(prefix) if prefix_len else None))  # (G, L, group)
    tokens = jnp.swapaxes(tokens, 1, 2).reshape(padded, gpt.seq_len)[:n]
    return tokens.reshape(n, *gpt.shape)

  return jax.jit(run)


def jitted_sampler(gpt: GPT, n: int, *, top_k: int | None = None, top_p: bool = False, greedy: bool = False,
                   group_size: int | None = None, platform: str | None = None, prefix_len: int = 0) -> Callable:
  """The jitted function `sample` calls: `(variables, rng, cond, temperature, top_p, prefix) -> codes`.

  For lowering it with abstract, sharded arguments (`train.aot_steps.compile_sampler`); `top_p` says whether a
  nucleus is used (its mass is the traced argument), `prefix` is None when `prefix_len` is 0.
  """
  group = min(int(n), int(group_size or default_group_size(gpt, int(n), platform or gpt.platform)))
  # Without a prefix the cache key is the one it always was (callers and tests look compiled samplers up by it).
  return _compiled_sampler(gpt, int(n), top_k, bool(top_p), bool(greedy), group,
                           *((int(prefix_len),) if prefix_len else ()))


def sample(gpt: GPT, variables: Any, rng: jax.Array, n: int, *, cond: conditioning.Cond | None = None,
           cond_frames: jax.Array | None = None, labels: jax.Array | None = None, temperature: float = 1.0,
           top_k: int | None = None,
           top_p: float | None = None, group_size: int | None = None, platform: str | None = None,
           prefix: jax.Array | None = None) -> jax.Array:
  """Samples `n` code grids from the prior.

  Args:
    gpt: the `GPT` module.
    variables: its variables (`params` and `codebook`).
    rng: PRNG key; the same key gives the same samples, whatever `group_size`.
    n: number of samples.
    cond: the conditioning mapping (`conditioning.make_cond`), batch n: `frames (n, n_cond_frames, H, W, 3)` in
      [-0.5, 0.5] for a frame-conditional prior, `label (n,)` int for a class-conditional one.
    cond_frames, labels: the keyword form of `cond` (the original's API), built into it by `make_cond`.
    temperature: softmax temperature (> 0), or 0 for greedy (argmax) decoding.
    top_k: keep only the k most likely codes at each step.
    top_p: keep only the nucleus of probability mass `top_p` in (0, 1].
    group_size: samples decoded together (None: `default_group_size` for `platform`, i.e. all of them on
      accelerators and as many as keep the KV caches in the CPU's cache on CPU).
    platform: the chip the sampler is for, choosing the default `group_size` (None: `gpt.platform`).
    prefix: `(n, P)` int codes of the first `P` raster positions (`P <= t*h*w`; e.g. the first latent frames
      flattened), copied into the result instead of drawn; the rest is drawn given them. A position's noise does
      not depend on `prefix`, so a prefix equal to the start of a sample with the same key gives that sample.

  Returns:
    codes `(n, t, h, w)` int32.
  """
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"sample: n must be a positive int, got {n!r}")
  if temperature < 0:
    raise ValueError(f"sample: temperature must be >= 0, got {temperature}")
  if top_k is not None and not 1 <= top_k <= gpt.n_codes:
    raise ValueError(f"sample: top_k must be in [1, n_codes={gpt.n_codes}], got {top_k}")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"sample: top_p must be in (0, 1], got {top_p}")
  if group_size is not None and not (isinstance(group_size, (int, np.integer)) and group_size >= 1):
    raise ValueError(f"sample: group_size must be a positive int or None, got {group_size!r}")
  cond = _as_arrays(conditioning.as_cond(cond, cond_frames, labels))
  for name, x in cond.items():
    if x.shape[0] != n:
      raise ValueError(f"sample: cond[{name!r}] has batch {x.shape[0]}, expected n={n}")
  if prefix is not None and (prefix.ndim != 2 or prefix.shape[0] != n or not 1 <= prefix.shape[1] <= gpt.seq_len):
    raise ValueError(f"sample: prefix must be (n={n}, P) with 1 <= P <= {gpt.seq_len}, got {prefix.shape}")
  fn = jitted_sampler(gpt, int(n), top_k=None if top_k is None else int(top_k), top_p=top_p is not None,
                      greedy=temperature == 0, group_size=group_size, platform=platform,
                      prefix_len=0 if prefix is None else int(prefix.shape[1]))
  return fn(variables, rng, cond, jnp.float32(temperature if temperature else 1.0),
            jnp.float32(1.0 if top_p is None else top_p), None if prefix is None else jnp.asarray(prefix, jnp.int32))


@functools.lru_cache(maxsize=64)
def _compiled_teacher_forcing(gpt: GPT) -> Callable:
  def run(variables, codes, cond):
    batch = codes.shape[0]
    flat = codes.reshape(batch, -1).astype(jnp.int32)

    def step(carry, _, target, logits):
      return carry, target, logits

    return _decode_scan(gpt, variables, batch, cond, step, None, flat.T)  # (L, B, K)

  return jax.jit(run)


def step_logits(gpt: GPT, variables: Any, codes: jax.Array, *, cond: conditioning.Cond | None = None,
                cond_frames: jax.Array | None = None, labels: jax.Array | None = None) -> jax.Array:
  """Teacher-forced cached decoding: the logits of every step, `(L, B, K)` in raster order.

  Step i sees `codes` at positions < i through the KV caches, exactly as during sampling, so the result equals
  the full forward's `logits.reshape(B, L, K)` transposed, up to float rounding. `cond` (or its keyword form
  `cond_frames`, `labels`) as for `sample`.
  """
  codes = jnp.asarray(codes)
  if codes.ndim != 4 or tuple(codes.shape[1:]) != tuple(gpt.shape):
    raise ValueError(f"step_logits: codes must be (B, {', '.join(map(str, gpt.shape))}), got {codes.shape}")
  return _compiled_teacher_forcing(gpt)(variables, codes.astype(jnp.int32),
                                        _as_arrays(conditioning.as_cond(cond, cond_frames, labels)))


@functools.lru_cache(maxsize=16)
def _compiled_decoder(vqvae: Any) -> Callable:
  def run(variables, codes):
    video = vqvae.apply(variables, codes, method=type(vqvae).decode_from_indices)
    # As the original's sample() + save_video_grid: clamp, shift to [0, 1], scale and truncate to uint8.
    return visualize.to_uint8(video, truncate=True)

  return jax.jit(run)


def decode_to_video(vqvae: Any, vqvae_variables: Any, codes: jax.Array) -> jax.Array:
  """Decodes codes `(n, t, h, w)` with the VQ-VAE to uint8 video `(n, T, H, W, 3)`."""
  return _compiled_decoder(vqvae)(vqvae_variables, jnp.asarray(codes, jnp.int32))


def _as_arrays(cond: dict[str, Any]) -> dict[str, jax.Array]:
  return {k: jnp.asarray(v, jnp.int32 if k == "label" else None) for k, v in cond.items()}
