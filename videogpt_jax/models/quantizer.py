"""The VQ-VAE's codebook: nearest-neighbour quantisation with an EMA-updated codebook and dead-code restarts.

State lives in the non-trainable collection `codebook`: `embeddings (K, D)`, `N (K,)` (EMA code counts),
`z_avg (K, D)` (EMA code sums) and `initialized` (bool scalar). Training-mode calls update it functionally
(apply with `mutable=["codebook"]` and `rngs={"codebook": key}`); everything, including the first-batch
initialisation, runs inside `jax.jit`. Statistics are plain reductions over the whole batch: with a batch sharded
over devices under `jax.jit` they are global, like the original's `all_reduce`.

The random draws (which batch vectors seed / restart codes, and the tiling noise) can be injected through `draws`
so that a test can replay the original's `torch.randperm` / `torch.randn_like` calls exactly.
"""
from __future__ import annotations

import math
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Keys of `draws`; each is optional (missing ones are drawn from the `codebook` rng stream).
DRAW_KEYS = ("init_indices", "init_noise", "restart_indices", "restart_noise")


def tile(flat: jax.Array, n_codes: int, noise: jax.Array | None) -> jax.Array:
  """The original's `_tile`: with fewer than `n_codes` vectors, repeat them and add N(0, (0.01/sqrt(D))^2) noise.

  Args:
    flat: `(N, D)` encoder vectors.
    n_codes: K.
    noise: standard normal `(ceil(K / N) * N, D)`; only used when `N < K`.
  Returns:
    `(max(N, ceil(K / N) * N), D)`.
  """
  n, dim = flat.shape
  if n >= n_codes:
    return flat
  reps = -(-n_codes // n)
  if noise is None or noise.shape != (reps * n, dim):
    raise ValueError(f"tile noise must have shape {(reps * n, dim)}, got {None if noise is None else noise.shape}")
  return jnp.tile(flat, (reps, 1)) + noise * (0.01 / math.sqrt(dim))


def random_rows(flat: jax.Array, n_codes: int, key: jax.Array | None, indices: jax.Array | None = None,
                noise: jax.Array | None = None) -> jax.Array:
  """`y[randperm(len(y))][:n_codes]` with `y = tile(flat)`: K random encoder vectors `(K, D)`.

  `indices` `(K,)` (the first K entries of the permutation) and `noise` replace the draws from `key`.
  """
  n, dim = flat.shape
  key_perm, key_noise = jax.random.split(key) if key is not None else (None, None)
  if n < n_codes and noise is None:
    noise = jax.random.normal(key_noise, (-(-n_codes // n) * n, dim), flat.dtype)
  y = tile(flat, n_codes, noise)
  if indices is None:
    indices = jax.random.permutation(key_perm, y.shape[0])[:n_codes]
  return jnp.take(y, indices, axis=0)


def nearest_codes(flat: jax.Array, embeddings: jax.Array) -> jax.Array:
  """Index of the nearest codebook vector (L2) for each row of `flat (N, D)` -> `(N,)` int32; ties -> lowest."""
  flat = flat.astype(jnp.float32)
  # The original's expansion ||z||^2 - 2 z.E^T + ||E||^2, in this order; full float32 matmul precision because
  # argmin margins are small (bfloat16 passes on TPU would flip codes).
  distances = (jnp.sum(flat ** 2, axis=1, keepdims=True)
               - 2 * jnp.matmul(flat, embeddings.T, precision=lax.Precision.HIGHEST)
               + jnp.sum(embeddings.T ** 2, axis=0, keepdims=True))
  return jnp.argmin(distances, axis=1).astype(jnp.int32)


def declare_state(module: nn.Module, n_codes: int, embedding_dim: int) -> dict[str, nn.Variable]:
  """Declares the codebook state in `module`'s `codebook` collection (call from `setup`); returns the variables.

  `embeddings` starts N(0, 1) (drawn from the `params` rng at init), `z_avg` equal to it, `N` at zeros.
  """
  k, d = n_codes, embedding_dim
  part = nn.with_logical_partitioning
  emb = module.variable(
      "codebook", "embeddings",
      part(lambda: jax.random.normal(module.make_rng("params"), (k, d), jnp.float32), ("codebook", None)))
  return {
      "embeddings": emb,
      "N": module.variable("codebook", "N", part(lambda: jnp.zeros((k,), jnp.float32), ("codebook",))),
      "z_avg": module.variable("codebook", "z_avg", part(lambda: jnp.array(emb.value), ("codebook", None))),
      "initialized": module.variable("codebook", "initialized", part(lambda: jnp.array(False), ())),
  }


def quantize(state: Mapping[str, nn.Variable], z: jax.Array, *, update: bool, key_fn, draws=None,
             decay: float = 0.99, commitment_cost: float = 0.25) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Quantises `z (..., D)` with the codebook `state` (from `declare_state`); optionally updates it in place.

  Args:
    state: the codebook variables.
    z: encoder output (pre-quantisation latents).
    update: training mode: initialise on the first batch, EMA-update, restart dead codes.
    key_fn: `() -> PRNGKey`, called only when an update needs a draw that `draws` does not provide.
    draws: optional replacements for the random draws (`DRAW_KEYS`, see `random_rows`).
    decay: EMA decay of counts and sums.
    commitment_cost: weight of `MSE(z, sg(e))`.
  Returns:
    `(z_q, aux)`: straight-through quantised latents shaped like `z`; aux has `codes` (`z.shape[:-1]`, int32),
    `commitment_loss`, `perplexity` (scalars).
  """
  k, dim = state["embeddings"].value.shape
  if z.shape[-1] != dim:
    raise ValueError(f"codebook input must end with embedding_dim={dim}, got shape {z.shape}")
  draws = dict(draws or {})
  unknown = set(draws) - set(DRAW_KEYS)
  if unknown:
    raise ValueError(f"unknown draws {sorted(unknown)}; expected a subset of {DRAW_KEYS}")
  flat = z.reshape(-1, dim).astype(jnp.float32)

  embeddings = state["embeddings"].value
  if update:
    needed = DRAW_KEYS if flat.shape[0] < k else ("init_indices", "restart_indices")  # Noise only when tiling.
    key = key_fn() if any(name not in draws for name in needed) else None
    key_init, key_restart = jax.random.split(key) if key is not None else (None, None)
    flat_sg = lax.stop_gradient(flat)

    # First training batch: seed the codebook with random encoder outputs (the original's _init_embeddings).
    def first_batch(_):
      rows = random_rows(flat_sg, k, key_init, draws.get("init_indices"), draws.get("init_noise"))
      return rows, rows, jnp.ones((k,), jnp.float32)

    def keep(_):
      return state["embeddings"].value, state["z_avg"].value, state["N"].value

    embeddings, z_avg, counts_ema = lax.cond(state["initialized"].value, keep, first_batch, None)

  codes = nearest_codes(flat, embeddings)
  e = jnp.take(embeddings, codes, axis=0)
  commitment_loss = commitment_cost * jnp.mean((flat - lax.stop_gradient(e)) ** 2)
  counts = jnp.zeros((k,), jnp.float32).at[codes].add(1.0)
  probs = counts / flat.shape[0]
  perplexity = jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))

  if update:
    sums = jnp.zeros((k, dim), jnp.float32).at[codes].add(flat_sg)
    # Same op order as the original (float32): a code used once right after initialisation lands exactly on
    # N == 1 and so counts as alive.
    counts_ema = counts_ema * decay + counts * (1 - decay)
    z_avg = z_avg * decay + sums * (1 - decay)
    n = jnp.sum(counts_ema)
    weights = (counts_ema + 1e-7) / (n + k * 1e-7) * n
    normalized = z_avg / weights[:, None]
    # Dead codes (EMA count < 1) restart at random encoder outputs of this batch.
    rows = random_rows(flat_sg, k, key_restart, draws.get("restart_indices"), draws.get("restart_noise"))
    usage = (counts_ema >= 1).astype(jnp.float32)[:, None]
    state["embeddings"].value = normalized * usage + rows * (1 - usage)
    state["z_avg"].value = z_avg
    state["N"].value = counts_ema
    state["initialized"].value = jnp.array(True)

  z_q = flat + lax.stop_gradient(e - flat)
  aux = {"codes": codes.reshape(z.shape[:-1]), "commitment_loss": commitment_loss, "perplexity": perplexity}
  return z_q.reshape(z.shape).astype(z.dtype), aux

