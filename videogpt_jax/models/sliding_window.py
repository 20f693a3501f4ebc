"""Videos longer than the prior's clip: its window slides forward in latent time.

The prior models `t` latent frames. The first window is an ordinary `sampling.sample`; every later window starts
with the last `overlap` latent frames generated so far, teacher-forced as a prefix (copied, not re-drawn), draws
the `t - overlap` frames after them, and sees the same conditioning (frames, labels) as the first. Window `w > 0`
draws its noise from `fold_in(rng, w)`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from videogpt_jax.models import conditioning, sampling
from videogpt_jax.models.gpt import GPT


def sample_long(gpt: GPT, variables: Any, rng: jax.Array, n: int, n_latent_frames: int, *,
                overlap: int | None = None, cond: conditioning.Cond | None = None, **sample_kwargs) -> jax.Array:
  """Samples `n` code grids `(n, n_latent_frames, h, w)`, any number of latent frames >= 1.

  Args:
    gpt, variables, rng, n, cond: as for `sampling.sample` (`cond` from `conditioning.make_cond`).
    n_latent_frames: latent frames of the result (the prior's clip has `gpt.shape[0]`).
    overlap: latent frames each new window shares with what is already generated, in [1, t - 1]
      (default `t // 2`); more overlap is more context per new frame and more windows.
    **sample_kwargs: temperature, top_k, top_p, group_size, passed to `sampling.sample`.

  Returns:
    codes `(n, n_latent_frames, h, w)` int32; the first `min(t, n_latent_frames)` frames are
    `sampling.sample(gpt, variables, rng, n, ...)`.
  """
  t, h, w = gpt.shape
  overlap = t // 2 if overlap is None else int(overlap)
  if n_latent_frames < 1:
    raise ValueError(f"sample_long: n_latent_frames must be >= 1, got {n_latent_frames}")
  if n_latent_frames > t and not 1 <= overlap < t:
    raise ValueError(f"sample_long: overlap must be in [1, {t - 1}] for a prior of {t} latent frames, got {overlap}")
  cond = dict(cond=cond, **sample_kwargs)  # sampling.sample validates it
  frames = [sampling.sample(gpt, variables, rng, n, **cond)]
  have, window = t, 1
  while have < n_latent_frames:
    context = jnp.concatenate(frames, axis=1)[:, -overlap:]
    codes = sampling.sample(gpt, variables, jax.random.fold_in(rng, window), n,
                            prefix=context.reshape(n, overlap * h * w), **cond)
    frames.append(codes[:, overlap:])
    have, window = have + t - overlap, window + 1
  return jnp.concatenate(frames, axis=1)[:, :n_latent_frames]


def num_windows(t: int, n_latent_frames: int, overlap: int) -> int:
  """How many prior windows `sample_long` runs for `n_latent_frames` with a `t`-frame prior."""
  return 1 + max(0, -(-(n_latent_frames - t) // (t - overlap)))
