"""VQ-VAE reconstruction quality: MSE, normalised MSE, the original's `recon_loss`, PSNR, SSIM (+ R-FVD).

MSE is on the raw decoder output (the original does not clamp it); PSNR and SSIM use the output clipped to
[-0.5, 0.5] (data range 1). `nmse` divides by the variance of all evaluated pixels, `recon_loss` by the original's
constant (`vqvae.RECON_LOSS_SCALE`). With `r_fvd`, also R-FVD: FVD between the reconstructions and their inputs
(both quantised as the original does for FVD, `visualize.to_uint8(x, truncate=True)`). TensorBoard gets the
first clips above their reconstructions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax import visualize
from videogpt_jax.evaluation import base, metrics
from videogpt_jax.evaluation import fvd as fvd_lib
from videogpt_jax.evaluation.evaluators import fvd as fvd_eval
from videogpt_jax.models import vqvae as vqvae_lib


@jax.jit
def _per_clip(video: jax.Array, recon: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  clipped = jnp.clip(recon, -0.5, 0.5)
  return metrics.mse(video, recon), metrics.psnr(video, clipped), metrics.ssim(video, clipped)


def evaluate(vqvae: base.Model, batches: Iterable[Mapping[str, Any]], *, i3d: base.Model | None = None,
             i3d_batch_size: int = 16, num_shown: int = 0) -> tuple[dict[str, Any], list[np.ndarray] | None]:
  """Reconstruction metrics over `batches`; returns `(scalars, [originals, reconstructions] of the first
  `num_shown` clips, or None)`."""
  module, variables = vqvae
  sq, ps, ss = [], [], []
  s1 = s2 = count = 0.0
  real_u8, recon_u8, shown = [], [], None
  for batch in batches:
    recon = base.reconstruct(module, variables, batch["video"])
    e, p, s = _per_clip(batch["video"], recon)
    mask = {"mask": batch["mask"]} if "mask" in batch else {}
    rows = base.valid_rows({"video": batch["video"], "recon": recon, "mse": e, "psnr": p, "ssim": s, **mask})
    video, recon = rows["video"].astype(np.float64), rows["recon"]
    sq.append(rows["mse"])
    ps.append(rows["psnr"])
    ss.append(rows["ssim"])
    s1, s2, count = s1 + video.sum(), s2 + np.square(video).sum(), count + video.size
    if i3d is not None:
      real_u8.append(visualize.to_uint8(video, truncate=True))
      recon_u8.append(visualize.to_uint8(recon, truncate=True))
    if shown is None and num_shown:
      shown = [video[:num_shown].astype(np.float32), np.clip(recon[:num_shown], -0.5, 0.5)]
  n = sum(len(x) for x in sq)
  if n == 0:
    raise ValueError("reconstruction: the evaluation data has no clips")
  mse = float(np.mean(np.concatenate(sq)))
  var = s2 / count - (s1 / count) ** 2
  out = {"mse": mse, "nmse": mse / var, "data_variance": float(var), "recon_loss": mse / vqvae_lib.RECON_LOSS_SCALE,
         "psnr": float(np.mean(np.concatenate(ps))), "ssim": float(np.mean(np.concatenate(ss))), "n_videos": n}
  if i3d is not None:
    i3d_module, i3d_vars = i3d
    out["r_fvd"] = fvd_lib.frechet_distance(
        fvd_lib.i3d_logits(np.concatenate(real_u8), i3d_module, i3d_vars, i3d_batch_size),
        fvd_lib.i3d_logits(np.concatenate(recon_u8), i3d_module, i3d_vars, i3d_batch_size))
  return out, shown


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluator:
  """Options: `max_batches` (0: the whole split), `r_fvd` (also R-FVD), `i3d_weights` (None: the shipped
  Kinetics-400 I3D), `i3d_batch_size`, `num_shown` (clips shown in TensorBoard; 0: none)."""
  max_batches: int = 0
  r_fvd: bool = False
  i3d_weights: str | None = None
  i3d_batch_size: int = 16
  num_shown: int = 4
  needs_prior = False

  def run(self, vqvae: base.Model, gpt: base.Model | None, data: base.EvalData, rng: jax.Array) -> base.Result:
    del gpt, rng
    i3d = None
    if self.r_fvd:
      fvd_lib.check_clip_length(int(data.info.get("seq_len", fvd_lib.I3D_MIN_FRAMES)), "r_fvd")
      i3d = fvd_eval.i3d_for(self.i3d_weights, data.platform)
    scalars, shown = evaluate(vqvae, base.limited(data.batches(0), self.max_batches, "reconstruction"), i3d=i3d,
                              i3d_batch_size=self.i3d_batch_size, num_shown=self.num_shown)
    return base.Result(scalars=scalars, videos={"reconstructions": shown} if shown is not None else {})
