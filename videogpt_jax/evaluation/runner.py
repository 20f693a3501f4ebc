"""The offline side of the evaluation system, behind `experiments/evaluate.py`: one registered evaluator
(`--protocol=<name>`, see `evaluators/`) on models restored from their workdirs, over the data of the config saved
with them.

Everything here takes a `Settings` (the command's flags, without absl), so evaluations can be run from Python too.
A setting whose name is an evaluator option (`n_trials`, `max_batches`, `cache_dir`, ...) is passed to it; the
others choose the models, the data and the mesh. A model directory is a training workdir (`<dir>/checkpoints`) or a
directory written by `python -m videogpt_jax.convert`; a converted VQ-VAE's config names no dataset, so `--dataset`
gives it.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import pathlib
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from videogpt_jax import checkpointing, inference, sharding
from videogpt_jax.evaluation import evaluators, suite

PROTOCOLS = evaluators.names()
# Settings named differently from the evaluator option they set.
_OPTION_SETTING = {"splits": "is_splits"}


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
  dataset: str | None = None
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
def checkpoint_root(path: str | os.PathLike) -> pathlib.Path | None:
  """The checkpoint directory of a model directory: `<path>/checkpoints` of a training workdir, or `path` itself
  when it holds checkpoint steps (a converted checkpoint); None when it is neither."""
  path = pathlib.Path(path)
  if (path / "checkpoints").is_dir():
    return path / "checkpoints"
  if path.is_dir() and any(p.is_dir() and p.name.isdigit() for p in path.iterdir()):
    return path
  return None


def _check_workdir(flag: str, path: str) -> None:
  if checkpoint_root(path) is None:
    raise SettingsError(f"--{flag}={path}: no checkpoints there (expected a training workdir with checkpoints/ "
                        "or a directory written by videogpt_jax.convert)")


def _check_file(flag: str, path: str | None, what: str) -> None:
  if path is not None and not os.path.isfile(path):
    raise SettingsError(f"--{flag}={path}: {what} file not found")


def evaluator_options(s: Settings) -> dict[str, Any]:
  """The settings that `s.protocol`'s evaluator takes as options."""
  params = inspect.signature(evaluators.get(s.protocol)).parameters
  return {name: getattr(s, _OPTION_SETTING.get(name, name)) for name in params
          if hasattr(s, _OPTION_SETTING.get(name, name))}


def validate(s: Settings) -> Any:
  """Raises `SettingsError` naming the flag for anything missing or out of range; returns the evaluator."""
  if s.protocol not in PROTOCOLS:
    raise SettingsError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {s.protocol!r}")
  needs_prior = evaluators.get(s.protocol).needs_prior
  if needs_prior:
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
  try:
    return evaluators.build(s.protocol, **evaluator_options(s))
  except ValueError as e:
    raise SettingsError(f"--protocol={s.protocol}: {e}") from None


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
  """The checkpoint step that `inference.load_*(workdir, step)` restores (the latest one when `step` is None)."""
  if step is not None:
    return int(step)
  checkpointer = checkpointing.Checkpointer(checkpoint_root(workdir), read_only=True)
  latest = checkpointer.latest_step()
  checkpointer.close()
  if latest is None:
    raise ValueError(f"{checkpoint_root(workdir)} holds no checkpoint")
  return int(latest)


def _load_models(s: Settings, mesh, needs_prior: bool) -> dict[str, Any]:
  """Restores what the protocol needs onto `mesh`: `vqvae`, `vq_config` (+ `gpt`, `gpt_config`) as
  `(module, variables)` pairs and configs, and a `models` description for the result."""
  out: dict[str, Any] = {"models": {}, "gpt": None, "gpt_config": None}
  vq_workdir = s.vqvae_workdir
  vq_step = s.vqvae_step
  if needs_prior:
    gpt, gpt_vars, out["gpt_config"] = inference.load_gpt(s.gpt_workdir, s.gpt_step, mesh=mesh)
    out["gpt"] = (gpt, gpt_vars)
    out["models"]["gpt_workdir"] = os.path.abspath(s.gpt_workdir)
    out["models"]["gpt_step"] = resolved_step(s.gpt_workdir, s.gpt_step)
    vq_workdir = vq_workdir or out["gpt_config"].get("vqvae_workdir")
    if not vq_workdir:
      raise SettingsError("--vqvae_workdir is required: the prior's config names no vqvae_workdir")
    _check_workdir("vqvae_workdir", vq_workdir)
    if vq_step is None and int(out["gpt_config"].get("vqvae_step", -1)) >= 0:
      vq_step = int(out["gpt_config"].vqvae_step)  # the VQ-VAE the prior was trained on
  vqvae, vq_vars, out["vq_config"] = inference.load_vqvae(vq_workdir, vq_step, mesh=mesh)
  out["vqvae"] = (vqvae, vq_vars)
  out["models"]["vqvae_workdir"] = os.path.abspath(vq_workdir)
  out["models"]["vqvae_step"] = resolved_step(vq_workdir, vq_step)
  logging.info("models: %s", out["models"])
  return out


def data_config(model_config: Any, s: Settings, workdir: str) -> ml_collections.ConfigDict:
  """The model config's `data` with `--dataset` / `--data_dir` applied (`--dataset=name` or `name/config`)."""
  data = ml_collections.ConfigDict((model_config.get("data") or ml_collections.ConfigDict()).to_dict())
  if s.dataset:
    name, _, builder_config = s.dataset.partition("/")
    data.name = name
    data.builder_config = builder_config
  if not data.get("name"):
    raise SettingsError(f"--dataset is required: the config saved in {workdir} names no dataset (a converted "
                        "checkpoint); e.g. --dataset=bair")
  for field in ("seq_len", "resolution"):
    if field not in data:
      raise SettingsError(f"the config saved in {workdir} has no data.{field}; this model cannot be evaluated")
  if s.data_dir:
    data.data_dir = s.data_dir
  return data


def evaluate(s: Settings) -> dict[str, Any]:
  """Runs `s.protocol`; returns `{"protocol", "metrics", "videos", "models", "data", "settings", "elapsed_s"}`
  (`videos`: the evaluator's videos, not JSON)."""
  evaluator = validate(s)
  start = time.perf_counter()
  mesh = make_mesh(s)
  models = _load_models(s, mesh, evaluator.needs_prior)
  workdir = s.gpt_workdir if evaluator.needs_prior else s.vqvae_workdir
  config = models["gpt_config"] if evaluator.needs_prior else models["vq_config"]
  try:
    data = suite.eval_data(data_config(config, s, workdir), mesh, batch_size=s.batch_size, split=s.split,
                           window_stride=s.window_stride)
  except ValueError as e:
    raise SettingsError(f"--split={s.split}: {e}" if s.split else str(e)) from None
  with jax.set_mesh(mesh):
    result = evaluator.run(models["vqvae"], models["gpt"], data, jax.random.key(s.seed))
  return {"protocol": s.protocol, "metrics": result.scalars, "videos": result.videos, "models": models["models"],
          "data": dict(data.info), "settings": dataclasses.asdict(s), "elapsed_s": time.perf_counter() - start}
