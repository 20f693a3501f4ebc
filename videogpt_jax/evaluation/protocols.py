"""The paper's evaluation protocols as library functions (the `experiments/evaluate.py` commands call these).

Inputs follow the shared contracts: iterators yield dicts of `video (B, T, H, W, 3)` float32 in [-0.5, 0.5],
`label (B,)` and, for evaluation iterators, `mask (B,)` (False marks padding rows, which are dropped). Models are the
VQ-VAE (`__call__(video, train) -> (recon, aux)`, `encode_to_indices`) and the GPT prior
(`apply(variables, codes, cond, deterministic=True) -> logits (B, t, h, w, K)`, `cond` from
`videogpt_jax.models.conditioning`).

- FVD (BAIR protocol): per trial, the next `n_videos` (256) real clips and as many samples conditioned on them;
  FVD between their I3D logits; mean and std over trials (paper: 103.3 +- 2.2).
- Reconstruction: MSE, normalised MSE (MSE / variance of the evaluated data), the original's `recon_loss`
  (MSE / 0.06), PSNR, SSIM and, with an I3D, R-FVD (FVD of reconstructions against the inputs).
- Bits/dim: the prior's cross-entropy on the VQ-VAE codes of held-out clips, in bits per latent token.
- Inception Score (UCF-101 protocol): C3D class probabilities of samples, 10 splits.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax.evaluation import c3d as c3d_lib
from videogpt_jax.evaluation import features_cache
from videogpt_jax.evaluation import fvd as fvd_lib
from videogpt_jax.evaluation import inception_score as is_lib
from videogpt_jax.evaluation import metrics
from videogpt_jax.models import conditioning

Batch = Mapping[str, Any]


def _valid_rows(batch: Batch) -> np.ndarray:
  """Boolean `(B,)` of the rows to keep (all rows when the batch has no `mask`)."""
  n = batch["video"].shape[0]
  mask = batch.get("mask")
  return np.ones((n,), bool) if mask is None else np.asarray(mask, bool).reshape(n)


def _take(batch: Batch, keep: np.ndarray) -> dict[str, np.ndarray]:
  return {k: np.asarray(v)[keep] for k, v in batch.items() if k != "mask"}


# ------------------------------------------------------------------------------------------------------- FVD
def evaluate_fvd(sample_fn: Callable[[jax.Array, dict[str, np.ndarray]], Any], real_iter: Iterable[Batch],
                 n_trials: int, *, rng: jax.Array, n_videos: int = 256,
                 i3d: tuple[Any, dict] | None = None, i3d_batch_size: int = 16,
                 cache_dir: str | None = None, cache_parts: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """FVD of samples against real clips, mean +- std over trials.

  Args:
    sample_fn: `(rng, batch) -> videos (B, T, H, W, 3)` in [-0.5, 0.5], one sample per row of `batch` (a dict of
      numpy arrays with padding rows removed), conditioned on it as the model requires (first frames, labels).
    real_iter: evaluation iterator; each trial takes the next `n_videos` valid clips (a batch that straddles two
      trials is split between them, so trials use disjoint, consecutive clips).
    n_trials: number of trials.
    rng: PRNG key; trial t, batch b samples with `fold_in(fold_in(rng, t), b)`.
    n_videos: clips per trial (256 in the paper).
    i3d: `(module, variables)`; the shipped Kinetics-400 I3D when None.
    i3d_batch_size: videos per I3D forward.
    cache_dir, cache_parts: when both are set, the real clips' I3D logits of trial t are cached under
      `{**cache_parts, "trial": t, "n_videos": n_videos}` (describe dataset, split, resolution, weights in it).
  Returns:
    `{"fvd": mean, "fvd_std": std, "fvd_trials": [per-trial FVD]}`.
  """
  if n_trials < 1 or n_videos < 2:
    raise ValueError(f"need n_trials >= 1 and n_videos >= 2, got {n_trials} and {n_videos}")
  module, variables = i3d if i3d is not None else fvd_lib.load_i3d()
  it: Iterator[Batch] = iter(real_iter)
  leftover: dict[str, np.ndarray] | None = None  # valid rows of a batch that straddles two trials
  scores = []
  for trial in range(n_trials):
    real, fake, got, b = [], [], 0, 0
    while got < n_videos:
      if leftover is not None:
        valid, leftover = leftover, None
      else:
        try:
          batch = next(it)
        except StopIteration:
          raise ValueError(f"real_iter ran out after {got} clips of trial {trial}; FVD needs {n_videos} per "
                           f"trial x {n_trials} trials") from None
        valid = _take(batch, _valid_rows(batch))
      take = min(n_videos - got, valid["video"].shape[0])
      if take < valid["video"].shape[0]:
        leftover = {k: v[take:] for k, v in valid.items()}
      valid = {k: v[:take] for k, v in valid.items()}
      if take == 0:
        continue
      samples = sample_fn(jax.random.fold_in(jax.random.fold_in(rng, trial), b), valid)
      if np.shape(samples)[0] != take:
        raise ValueError(f"sample_fn returned {np.shape(samples)[0]} videos for a batch of {take}")
      real.append(fvd_lib.to_uint8(valid["video"]))
      fake.append(fvd_lib.to_uint8(samples))
      got += take
      b += 1
    compute_real = lambda: fvd_lib.i3d_logits(np.concatenate(real), module, variables, i3d_batch_size)  # noqa: B023
    if cache_dir is not None and cache_parts is not None:
      real_logits = features_cache.cached(cache_dir, {**cache_parts, "trial": trial, "n_videos": n_videos},
                                          compute_real)
    else:
      real_logits = compute_real()
    fake_logits = fvd_lib.i3d_logits(np.concatenate(fake), module, variables, i3d_batch_size)
    scores.append(fvd_lib.frechet_distance(real_logits, fake_logits))
  return {"fvd": float(np.mean(scores)), "fvd_std": float(np.std(scores)), "fvd_trials": scores}


# ------------------------------------------------------------------------------------------- reconstruction
@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(vqvae: Any, variables: dict, video: jax.Array) -> tuple[jax.Array, ...]:
  recon, _ = vqvae.apply(variables, video, train=False)
  clipped = jnp.clip(recon, -0.5, 0.5)
  return recon, metrics.mse(video, recon), metrics.psnr(video, clipped), metrics.ssim(video, clipped)


def evaluate_reconstruction(vqvae: Any, variables: dict, iterator: Iterable[Batch], *,
                            max_batches: int | None = None, i3d: tuple[Any, dict] | None = None,
                            i3d_batch_size: int = 16) -> dict[str, float]:
  """VQ-VAE reconstruction quality over (at most `max_batches` of) an evaluation iterator.

  MSE is on the raw decoder output (the original does not clamp it); PSNR and SSIM use the output clipped to
  [-0.5, 0.5] (data range 1). `nmse` divides by the variance of all evaluated pixels; `recon_loss` by the
  original's constant 0.06. With `i3d`, also `r_fvd`: FVD between reconstructions and inputs (uint8-quantised).
  """
  sq, ps, ss, n = [], [], [], 0
  s1 = s2 = count = 0.0
  real_u8, recon_u8 = [], []
  for i, batch in enumerate(iterator):
    if max_batches is not None and i >= max_batches:
      break
    keep = _valid_rows(batch)
    recon, e, p, s = _reconstruct(vqvae, variables, batch["video"])
    video = np.asarray(batch["video"], np.float64)[keep]
    sq.append(np.asarray(e)[keep])
    ps.append(np.asarray(p)[keep])
    ss.append(np.asarray(s)[keep])
    s1, s2, count = s1 + video.sum(), s2 + np.square(video).sum(), count + video.size
    n += int(keep.sum())
    if i3d is not None:
      real_u8.append(fvd_lib.to_uint8(video))
      recon_u8.append(fvd_lib.to_uint8(np.asarray(recon)[keep]))
  if n == 0:
    raise ValueError("evaluate_reconstruction got no valid clips from the iterator")
  mse = float(np.mean(np.concatenate(sq)))
  var = s2 / count - (s1 / count) ** 2
  out = {"mse": mse, "nmse": mse / var, "data_variance": float(var),
         "recon_loss": mse / metrics.ORIGINAL_DATA_VARIANCE, "psnr": float(np.mean(np.concatenate(ps))),
         "ssim": float(np.mean(np.concatenate(ss))), "n_videos": n}
  if i3d is not None:
    module, i3d_vars = i3d
    out["r_fvd"] = fvd_lib.frechet_distance(
        fvd_lib.i3d_logits(np.concatenate(real_u8), module, i3d_vars, i3d_batch_size),
        fvd_lib.i3d_logits(np.concatenate(recon_u8), module, i3d_vars, i3d_batch_size))
  return out


# ---------------------------------------------------------------------------------------------- bits per dim
@functools.partial(jax.jit, static_argnums=(0, 2, 5))
def _token_nats(gpt: Any, gpt_variables: dict, vqvae: Any, vqvae_variables: dict, batch: dict,
                n_cond_frames: int) -> jax.Array:
  video = batch["video"]
  codes = vqvae.apply(vqvae_variables, video, method="encode_to_indices")
  cond = conditioning.from_batch(batch, n_cond_frames, "label" in batch)
  logits = gpt.apply(gpt_variables, codes, cond, deterministic=True)
  ce = metrics.token_cross_entropy(logits, codes)
  return jnp.mean(ce.reshape(ce.shape[0], -1), axis=1)


def evaluate_bits_per_dim(gpt: Any, gpt_variables: dict, vqvae: Any, vqvae_variables: dict,
                          iterator: Iterable[Batch], *, n_cond_frames: int = 0, class_cond: bool = False,
                          max_batches: int | None = None) -> dict[str, float]:
  """Prior negative log-likelihood of held-out clips' codes, in nats and bits per latent token (bits/dim).

  Every clip has the same number of tokens, so the per-clip means are averaged. `n_cond_frames` feeds the first
  frames to a frame-conditional prior; `class_cond` passes `batch["label"]` to a class-conditional one.
  """
  total, n = 0.0, 0
  for i, batch in enumerate(iterator):
    if max_batches is not None and i >= max_batches:
      break
    keep = _valid_rows(batch)
    inputs = {"video": batch["video"]}
    if class_cond:
      if "label" not in batch:
        raise ValueError("class_cond=True but the batches have no 'label'")
      inputs["label"] = batch["label"]
    nats = np.asarray(_token_nats(gpt, gpt_variables, vqvae, vqvae_variables, inputs, n_cond_frames),
                      np.float64)[keep]
    total, n = total + nats.sum(), n + int(keep.sum())
  if n == 0:
    raise ValueError("evaluate_bits_per_dim got no valid clips from the iterator")
  nats = total / n
  return {"nats_per_dim": nats, "bits_per_dim": float(metrics.bits_per_dim(nats)), "n_videos": n}


# ------------------------------------------------------------------------------------------ inception score
def evaluate_inception_score(sample_fn: Callable[[jax.Array, int], Any], n_samples: int,
                             c3d: tuple[c3d_lib.C3D, dict, Any], *, rng: jax.Array, sample_batch_size: int = 32,
                             splits: int = 10, c3d_batch_size: int = 32) -> dict[str, float]:
  """UCF-101 Inception Score of `n_samples` generated clips (TGAN-v2 protocol).

  Args:
    sample_fn: `(rng, n) -> videos (n, 16, H, W, 3)` in [-0.5, 0.5].
    n_samples: number of samples (TGAN-v2 / VideoGPT use 10,000 or more).
    c3d: `(module, variables, mean)` from `c3d.load_c3d`.
    rng: PRNG key; batch b samples with `fold_in(rng, b)`.
  """
  module, variables, mean = c3d
  probs = []
  for b, start in enumerate(range(0, n_samples, sample_batch_size)):
    n = min(sample_batch_size, n_samples - start)
    videos = np.asarray(sample_fn(jax.random.fold_in(rng, b), n), np.float32)
    if videos.shape[0] != n:
      raise ValueError(f"sample_fn returned {videos.shape[0]} videos, asked for {n}")
    probs.append(is_lib.c3d_probs(videos * 2.0, module, variables, mean, c3d_batch_size))
  mean_is, std_is = is_lib.inception_score(np.concatenate(probs), splits)
  return {"is": mean_is, "is_std": std_is, "n_samples": n_samples}
