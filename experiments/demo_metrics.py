"""How good the demo's samples are: per-frame PSNR/SSIM against the real continuation and a motion score, for the
samples and for baselines computed the same way.

Every video here is uint8 `(N, T, H, W, 3)` over the same N test clips, whose frame 0 conditions the prior. Scores
are over frames 1..T-1 (the continuation a frame-conditional prior must predict; frame 0 is given).

Motion score: a Fréchet distance between the distributions of digit trajectories, real vs generated. A clip's
trajectory is its intensity-weighted centroid per frame; its feature is the `(T-1) * 2` centroid displacements
(frame t -> t+1), in pixels. The Gaussian over these features holds the speed (variance), the direction spread and
the constancy of velocity over time (covariance across frames): a still video scores `tr(S_real)`, a jittering one
is penalised for its uncorrelated steps. It is cheap (no network) and exact for one-digit Moving MNIST, where the
centroid is the digit's position; FVD's I3D (224x224, Kinetics features) would cost minutes of the demo's CPU budget
and is not meant for 32x32 digits.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax.evaluation import fvd, metrics

# Gray levels below this (of 1.0) are background; keeps decoder haze out of the centroid.
_FOREGROUND = 0.2


def _as_float(video: np.ndarray) -> np.ndarray:
  return np.asarray(video, np.float32) / 255.0


@jax.jit
def _frame_scores(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-frame PSNR and SSIM `(N, T)` of float videos in [0, 1]."""
  n, t = x.shape[:2]
  frames = lambda v: v.reshape(n * t, 1, *v.shape[2:])  # noqa: E731  (each frame a one-frame video)
  return (metrics.psnr(frames(x), frames(y)).reshape(n, t), metrics.ssim(frames(x), frames(y)).reshape(n, t))


def per_frame_scores(real: np.ndarray, fake: np.ndarray, max_psnr: float = 60.0) -> dict[str, list[float]]:
  """Mean over clips of per-frame PSNR (dB, each frame capped at `max_psnr`) and SSIM, frames 1..T-1."""
  if real.shape != fake.shape:
    raise ValueError(f"per_frame_scores: real {real.shape} and fake {fake.shape} differ")
  psnr, ssim = _frame_scores(jnp.asarray(_as_float(real)), jnp.asarray(_as_float(fake)))
  psnr = np.minimum(np.asarray(psnr, np.float64), max_psnr)[:, 1:]
  return {"psnr": psnr.mean(0).tolist(), "ssim": np.asarray(ssim, np.float64)[:, 1:].mean(0).tolist()}


def centroids(video: np.ndarray) -> np.ndarray:
  """Intensity-weighted foreground centroid `(N, T, 2)` (row, column) in pixels; the frame centre if empty."""
  gray = _as_float(video).mean(-1)  # (N, T, H, W)
  weight = np.where(gray > _FOREGROUND, gray, 0.0)
  h, w = gray.shape[2:]
  mass = weight.sum((2, 3))
  rows = (weight * np.arange(h)[:, None]).sum((2, 3))
  cols = (weight * np.arange(w)[None, :]).sum((2, 3))
  safe = np.maximum(mass, 1e-6)
  centre = np.stack([np.full_like(mass, (h - 1) / 2), np.full_like(mass, (w - 1) / 2)], -1)
  return np.where((mass > 0)[..., None], np.stack([rows / safe, cols / safe], -1), centre)


def motion_features(video: np.ndarray) -> np.ndarray:
  """Centroid displacements between consecutive frames, flattened: `(N, (T-1) * 2)`."""
  c = centroids(video)
  return (c[:, 1:] - c[:, :-1]).reshape(len(c), -1)


def motion_scores(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
  """Fréchet distance of the trajectory features (px^2) and the mean digit speed (px per frame)."""
  real_f, fake_f = motion_features(real), motion_features(fake)
  speed = np.linalg.norm(fake_f.reshape(len(fake_f), -1, 2), axis=-1).mean()
  return {"motion_fd": fvd.frechet_distance(real_f, fake_f), "speed": float(speed)}


def mean_speed(video: np.ndarray) -> float:
  """Mean digit speed (px per frame) of `video`."""
  return float(np.linalg.norm(motion_features(video).reshape(len(video), -1, 2), axis=-1).mean())


def evaluate(real: np.ndarray, candidates: Mapping[str, np.ndarray]) -> dict[str, dict]:
  """Scores of every candidate video set against `real`, plus the real clips' own speed.

  A candidate may hold k videos per real clip (`k * N` videos, the k-th block for clip i at `k * N + i`): it is
  scored against the real clips repeated k times.
  """
  out = {}
  for name, video in candidates.items():
    if len(video) % len(real):
      raise ValueError(f"candidate {name!r} has {len(video)} videos, not a multiple of the {len(real)} real clips")
    ref = np.concatenate([real] * (len(video) // len(real)))
    out[name] = {**per_frame_scores(ref, video), **motion_scores(real, video)}
  out["real"] = {"speed": mean_speed(real), "motion_fd": 0.0}
  return out


def _shifted(frame: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """`frame (H, W, C)` moved by whole pixels, the uncovered border black."""
  out = np.zeros_like(frame)
  h, w = frame.shape[:2]
  if abs(dy) < h and abs(dx) < w:
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = frame[max(-dy, 0):h - max(dy, 0),
                                                                       max(-dx, 0):w - max(dx, 0)]
  return out


def moved_first(rng: np.random.Generator, real: np.ndarray, speed: float, draws: int = 4) -> np.ndarray:
  """Frame 0 of each clip moved along a straight line at `speed` px per frame in a random direction (`draws`
  directions per clip, uniform on the circle): `(draws * N, T, H, W, C)` uint8.

  The baseline of a sampler that knows the digit and how fast it moves but not where to, the one thing a single
  conditioning frame does not tell: a sample that commits to a direction pays for it against the real
  continuation, where copying frame 0 (no motion) does not. Positions are rounded to whole pixels (no blur); walls
  are not modelled (the digit slides out of the frame instead of bouncing).
  """
  n, t = real.shape[:2]
  theta = rng.uniform(0.0, 2.0 * np.pi, size=draws * n)
  out = np.empty((draws * n, *real.shape[1:]), real.dtype)
  for j, angle in enumerate(theta):
    step = speed * np.array([np.sin(angle), np.cos(angle)])
    for k in range(t):
      dy, dx = np.round(k * step).astype(int)
      out[j, k] = _shifted(real[j % n, 0], int(dy), int(dx))
  return out


def marginal_codes(rng: np.random.Generator, train_codes: np.ndarray, n_codes: int, shape: tuple[int, ...]
                   ) -> np.ndarray:
  """Codes `(N, t, h, w)` drawn i.i.d. from the training codes' marginal frequencies (the no-model baseline)."""
  freq = np.bincount(np.asarray(train_codes).ravel(), minlength=n_codes).astype(np.float64)
  return rng.choice(n_codes, size=shape, p=freq / freq.sum()).astype(np.int32)


def table(scores: Mapping[str, Mapping], names: Mapping[str, str]) -> str:
  """One plain-text table: a row per candidate, per-frame PSNR then SSIM, motion FD and speed."""
  first = next(iter(names))
  n = len(scores[first]["psnr"])
  head = (f"{'':<26}" + " ".join(f"{f'psnr{t}':>6}" for t in range(1, n + 1)) + " | "
          + " ".join(f"{f'ssim{t}':>6}" for t in range(1, n + 1)) + f" | {'motionFD':>8} {'speed':>6}")
  lines = [head]
  for key, label in names.items():
    s = scores[key]
    lines.append(f"{label:<26}" + " ".join(f"{v:6.2f}" for v in s["psnr"]) + " | "
                 + " ".join(f"{v:6.3f}" for v in s["ssim"]) + f" | {s['motion_fd']:8.2f} {s['speed']:6.2f}")
  lines.append(f"{'real clips':<26}" + " " * (7 * n - 1) + " | " + " " * (7 * n - 1)
               + f" | {0.0:8.2f} {scores['real']['speed']:6.2f}")
  return "\n".join(lines)
