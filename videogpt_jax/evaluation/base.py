"""What every evaluator shares: its inputs (`Model`, `EvalData`), its output (`Result`), and the model calls.

An evaluator is one file in `videogpt_jax/evaluation/evaluators/` defining `class Evaluator`:

  class Evaluator:
    needs_prior: bool = False          # True: `run` gets the prior too
    def __init__(self, *, option=default, ...): ...   # explicit keyword options (`config.eval_options.<name>`)
    def run(self, vqvae: Model, gpt: Model | None, data: EvalData, rng: jax.Array) -> Result: ...

`Model` is a `(module, variables)` pair as `videogpt_jax.inference` restores it. The trainers run the evaluators of
`config.evals` on their live state; `experiments/evaluate.py` runs one of them on restored checkpoints.

Batches follow the pipeline's contract: dicts of global arrays `video (B, T, H, W, 3)` float32 in [-0.5, 0.5],
`mask (B,)` (False marks padding rows, which are dropped), `label (B,)` for labelled datasets, and
`cond_frames (B, n, H, W, 3)` when asked for `n` conditioning frames.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from videogpt_jax import sharding
from videogpt_jax.models import conditioning as cond_lib
from videogpt_jax.models import sampling

Model = tuple[Any, Any]  # (flax module, its variables)


@dataclasses.dataclass(frozen=True)
class EvalData:
  """Evaluation clips as the model's config reads them.

  Attributes:
    batches: `n_cond_frames -> iterable` over one padded pass of the split (a fresh pass per call); with
      `n_cond_frames > 0` the batches also hold `cond_frames`.
    batch_size: rows of every batch (global); the sampler compiles for this many rows too.
    sharding: how a batch's leading axis is split over the mesh (None: unsharded, one device).
    info: what the clips are (dataset, split, clip length, resolution, ...): goes into cached-feature keys and
      into the offline result.
    platform: the chip the evaluation runs on (`models.platforms`): the formulation of feature networks (I3D).
  """
  batches: Callable[[int], Iterable[Mapping[str, Any]]]
  batch_size: int
  sharding: jax.sharding.Sharding | None = None
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  platform: str = "cpu"


@dataclasses.dataclass
class Result:
  """`scalars`: JSON-ready numbers (and lists of them); `videos`: TensorBoard videos, each `(B, T, H, W, 3)` in
  [-0.5, 0.5] or a list of such rows of equal shape (drawn one above the other)."""
  scalars: dict[str, Any] = dataclasses.field(default_factory=dict)
  videos: dict[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Batches.
# ---------------------------------------------------------------------------------------------------------------
def valid_rows(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The batch on the host without its padding rows (and without `mask`)."""
  host = {k: sharding.to_host(v) if isinstance(v, jax.Array) else np.asarray(v) for k, v in batch.items()}
  n = host["video"].shape[0]
  keep = np.asarray(host.pop("mask"), bool).reshape(n) if "mask" in host else np.ones((n,), bool)
  return {k: v[keep] for k, v in host.items()}


def mask_of(batch: Mapping[str, Any]) -> np.ndarray:
  """Boolean `(B,)` of the rows to keep (all rows when the batch has no `mask`)."""
  n = batch["video"].shape[0]
  mask = batch.get("mask")
  return np.ones((n,), bool) if mask is None else np.asarray(sharding.to_host(mask), bool).reshape(n)


def limited(batches: Iterable[Mapping[str, Any]], max_batches: int | None, what: str) -> Iterator[Mapping[str, Any]]:
  """At most `max_batches` (None or 0: all) of `batches`, logging `what: batch i` with the rate so far."""
  start = time.perf_counter()
  for i, batch in enumerate(batches):
    if max_batches and i >= max_batches:
      return
    elapsed = time.perf_counter() - start
    rate = f", {i / elapsed:.2f} batches/s" if i and elapsed > 0 else ""
    logging.info("%s: batch %d%s (%.1f s%s)", what, i + 1, f"/{max_batches}" if max_batches else "", elapsed, rate)
    yield batch


def first_clips(data: EvalData, n: int, n_cond_frames: int,
                extra: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> dict[str, np.ndarray]:
  """The first `n` valid clips of the split as host arrays (fewer only if the split has fewer); `extra(batch)`
  adds arrays computed from each batch before its padding rows are dropped (e.g. reconstructions)."""
  parts: list[dict[str, np.ndarray]] = []
  got = 0
  for batch in data.batches(n_cond_frames):
    rows = valid_rows({**batch, **(extra(batch) if extra is not None else {})})
    parts.append({k: v[:n - got] for k, v in rows.items()})
    got += parts[-1]["video"].shape[0]
    if got >= n:
      break
  if not parts:
    return {}
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------------------------------------------------------
# Model calls, jitted once per module.
# ---------------------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def reconstruct(vqvae: Any, variables: Any, video: jax.Array) -> jax.Array:
  """The VQ-VAE's reconstruction `(B, T, H, W, 3)` float32 of `video`, not clipped (the original's MSE uses the
  raw decoder output; callers clip to [-0.5, 0.5] for PSNR, SSIM, FVD and pictures)."""
  recon, _ = vqvae.apply(variables, video, train=False)
  return recon.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def decode(vqvae: Any, variables: Any, codes: jax.Array) -> jax.Array:
  """Codes `(B, t, h, w)` -> video `(B, T, H, W, 3)` float32 clipped to [-0.5, 0.5], as the original's sampler."""
  video = vqvae.apply(variables, codes, method=type(vqvae).decode_from_indices)
  return jnp.clip(video.astype(jnp.float32), -0.5, 0.5)


def conditioning(gpt: Any, clips: Mapping[str, Any]) -> dict[str, Any]:
  """The prior's conditioning mapping (`models.conditioning`) taken from real clips: their first frames for a
  frame-conditional prior, their labels for a class-conditional one."""
  return cond_lib.from_batch(clips, int(gpt.n_cond_frames), bool(gpt.class_cond_dim))


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)]) if x.shape[0] < rows else x


@dataclasses.dataclass
class Sampler:
  """Samples videos `(n, T, H, W, 3)` in [-0.5, 0.5] from the prior and decodes them with the VQ-VAE.

  Every call of the compiled sampler has `batch_size` rows (short requests are padded), so one shape is compiled;
  conditioning inputs and codes are split over the batch `sharding`. Batch i of a call samples with
  `fold_in(rng, i)`.
  """
  gpt: Model
  vqvae: Model
  batch_size: int
  sharding: jax.sharding.Sharding | None = None
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None

  def __call__(self, rng: jax.Array, n: int, cond: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """`n` samples; row i conditioned on row i of each entry of `cond` (`models.conditioning.make_cond`)."""
    (gpt, gpt_vars), (vqvae, vq_vars) = self.gpt, self.vqvae
    out = []
    for i, start in enumerate(range(0, n, self.batch_size)):
      rows = slice(start, min(start + self.batch_size, n))
      codes = sampling.sample(gpt, gpt_vars, jax.random.fold_in(rng, i), self.batch_size,
                              cond={k: self._put(v, rows) for k, v in (cond or {}).items()},
                              temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
      if self.sharding is not None:
        codes = jax.device_put(codes, self.sharding)
      out.append(sharding.to_host(decode(vqvae, vq_vars, codes))[:rows.stop - rows.start])
    return np.concatenate(out)

  def _put(self, x: np.ndarray, rows: slice) -> jax.Array:
    padded = _pad_rows(np.asarray(x[rows]), self.batch_size)
    return jax.device_put(padded, self.sharding) if self.sharding is not None else jnp.asarray(padded)
