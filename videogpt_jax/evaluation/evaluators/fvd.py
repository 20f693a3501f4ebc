"""FVD of the prior's samples against real clips: the paper's BAIR protocol.

The real set is the first `clips_per_trial` clips of the split (BAIR: the test split's 256 trajectories, each one
16-frame clip). Their I3D logits are computed once per run (and kept under `cache_dir` across runs). Each of the
`n_trials` trials draws `clips_per_trial` NEW samples, sample i conditioned on real clip i (its first
`n_cond_frames` frames, or its label), with the key `fold_in(rng, trial)`; the trial's FVD is between those samples
and the fixed real set. The result is the mean and std over trials (paper, BAIR, 10 trials x 256: 103.3 +- 2.2).

`fvd_star.py` is the same protocol against the VQ-VAE's reconstructions of the real clips (FVD*).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from videogpt_jax import visualize
from videogpt_jax.evaluation import base, features_cache
from videogpt_jax.evaluation import fvd as fvd_lib


@functools.lru_cache(maxsize=2)
def i3d_for(path: str | None, platform: str) -> base.Model:
  """The I3D of `path` (None: the shipped weights) for `platform`, loaded once per process."""
  return fvd_lib.load_i3d(path, platform=platform)


def fingerprint(variables: Any) -> str:
  """A short digest of a model's variables: cached features of its outputs are keyed by it."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(variables):
    x = np.asarray(jax.device_get(leaf))
    h.update(str((x.shape, x.dtype)).encode())
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()[:16]


def fvd_trials(sample_fn: Callable[[jax.Array], np.ndarray], real_logits: np.ndarray, n_trials: int, *,
               rng: jax.Array, i3d: base.Model, i3d_batch_size: int = 16) -> list[float]:
  """Per-trial FVD of `sample_fn(fold_in(rng, trial))` (videos `(N, T, H, W, 3)` in [-0.5, 0.5]) against the
  fixed real logits `(N, num_classes)`."""
  module, variables = i3d
  scores = []
  for trial in range(n_trials):
    videos = sample_fn(jax.random.fold_in(rng, trial))
    fake_logits = fvd_lib.i3d_logits(visualize.to_uint8(videos, truncate=True), module, variables, i3d_batch_size)
    scores.append(fvd_lib.frechet_distance(real_logits, fake_logits))
    logging.info("fvd: trial %d/%d: %.4f", trial + 1, n_trials, scores[-1])
  return scores


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluator:
  """Options: `n_trials`, `clips_per_trial` (the real set: the split's first clips), `i3d_weights` (None: the
  shipped Kinetics-400 I3D), `i3d_batch_size`, `cache_dir` (real-set logits kept across runs; None: not kept),
  sampling `temperature` / `top_k` / `top_p`."""
  n_trials: int = 1
  clips_per_trial: int = 256
  i3d_weights: str | None = None
  i3d_batch_size: int = 16
  cache_dir: str | None = None
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None
  needs_prior = True
  reference = "real"  # FVD*: "vqvae_reconstructions"
  name = "fvd"

  def __post_init__(self):
    if self.n_trials < 1 or self.clips_per_trial < 2:
      raise ValueError(f"{self.name}: need n_trials >= 1 and clips_per_trial >= 2 (a covariance), got "
                       f"{self.n_trials} and {self.clips_per_trial}")

  def run(self, vqvae: base.Model, gpt: base.Model | None, data: base.EvalData, rng: jax.Array) -> base.Result:
    gpt_module = gpt[0]
    fvd_lib.check_clip_length(int(data.info.get("seq_len", fvd_lib.I3D_MIN_FRAMES)), self.name)
    star = self.reference != "real"
    extra = (lambda b: {"reference": jnp.clip(base.reconstruct(vqvae[0], vqvae[1], b["video"]), -0.5, 0.5)}
             ) if star else None
    clips = base.first_clips(data, self.clips_per_trial, int(gpt_module.n_cond_frames), extra=extra)
    got = clips["video"].shape[0] if clips else 0
    if got < self.clips_per_trial:
      raise ValueError(f"{self.name}: clips_per_trial={self.clips_per_trial}, but the split "
                       f"{data.info.get('split', '')!r} has {got} clips")
    i3d = i3d_for(self.i3d_weights, data.platform)
    parts = {"features": "i3d_logits", "clips": self.reference, **data.info, **fvd_lib.describe_i3d(self.i3d_weights),
             "n_videos": self.clips_per_trial}
    if star:
      parts["vqvae"] = fingerprint(vqvae[1])
    cached = self.cache_dir is not None and features_cache.load(self.cache_dir, parts) is not None
    reference = clips.pop("reference") if star else clips["video"]
    real_logits = features_cache.cached(self.cache_dir, parts, lambda: fvd_lib.i3d_logits(
        visualize.to_uint8(reference, truncate=True), *i3d, self.i3d_batch_size))
    logging.info("%s: %d trials x %d clips; real-set features %s", self.name, self.n_trials,
                 self.clips_per_trial, "from the cache" if cached else "computed")
    sampler = base.Sampler(gpt, vqvae, data.batch_size, data.sharding, self.temperature, self.top_k, self.top_p)
    cond = base.conditioning(gpt_module, clips)
    scores = fvd_trials(lambda key: sampler(key, self.clips_per_trial, cond), real_logits, self.n_trials,
                        rng=rng, i3d=i3d, i3d_batch_size=self.i3d_batch_size)
    name = self.name
    return base.Result(scalars={
        name: float(np.mean(scores)), f"{name}_std": float(np.std(scores)), f"{name}_trials": scores,
        "n_trials": self.n_trials, "clips_per_trial": self.clips_per_trial,
        "n_cond_frames": int(gpt_module.n_cond_frames), "real_features_cached": cached})
