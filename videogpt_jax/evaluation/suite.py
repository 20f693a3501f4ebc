"""The config edge of the evaluation system: which evaluators a config asks for, and the data its model reads.

Config fields (both stages; defaults in `experiments/configs/common_config.py`):
  config.evals         tuple of evaluator names (`videogpt_jax/evaluation/evaluators/<name>.py`), run by the trainer
                       every `config.eval_every` steps and at the last step; () runs none.
  config.eval_options  `{name: {option: value}}`: keyword options of that evaluator's constructor; the option
                       `every` (steps, 0: never) replaces `config.eval_every` for that evaluator alone (e.g. the
                       priors' `eval_options.samples = {every: 10_000, num_samples: 8}`).
  config.eval_batches  caps the batches of evaluators that take `max_batches` (0: the whole split).

Everything below this file takes explicit arguments; only this file and the entry points read configs.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from videogpt_jax import sharding
from videogpt_jax.evaluation import base, evaluators
from videogpt_jax.models import platforms


@dataclasses.dataclass(frozen=True)
class Scheduled:
  """An evaluator of `config.evals` with its period in steps (0: never during training)."""
  name: str
  evaluator: Any
  every: int

  def due(self, step: int, total_steps: int) -> bool:
    return bool(self.every) and (step % self.every == 0 or step == total_steps)


def from_config(config: Any, *, has_prior: bool) -> list[Scheduled]:
  """The evaluators of `config.evals`, built with their `config.eval_options`; a `ValueError` naming the config
  field for an unknown name, an unknown option, or (`has_prior=False`) an evaluator that needs a prior."""
  names = tuple(config.get("evals", ()) or ())
  options: Mapping[str, Any] = config.get("eval_options") or {}
  eval_every = int(config.get("eval_every", 0) or 0)
  out = []
  for name in names:
    opts = dict(options.get(name, {}) or {})
    every = int(opts.pop("every", eval_every) or 0)
    try:
      cls = evaluators.get(name)
      if "max_batches" in _option_names(cls) and "max_batches" not in opts:
        opts["max_batches"] = int(config.get("eval_batches", 0) or 0)
      evaluator = evaluators.build(name, **opts)
    except ValueError as e:
      raise ValueError(f"config.evals / config.eval_options.{name}: {e}") from None
    if evaluator.needs_prior and not has_prior:
      runnable = [n for n in evaluators.names() if not evaluators.get(n).needs_prior]
      raise ValueError(f"config.evals: {name!r} needs a prior; a VQ-VAE run can evaluate {', '.join(runnable)}")
    out.append(Scheduled(name, evaluator, every))
  return out


def _option_names(cls: type) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else ()


def eval_data(data_config: Any, mesh: jax.sharding.Mesh | None, *, batch_size: int, builder: Any = None,
              split: str | None = None, window_stride: int | None = None, defer: bool = False) -> base.EvalData:
  """The evaluation clips of `data_config` (a config's `data` section): one padded pass over `split` (default
  `data_config.eval_split`) per `batches(n_cond_frames)` call, split over `mesh`'s batch axes.

  With `defer`, the dataset is only opened (and its split checked) on the first `batches()` call, so a run whose
  evaluators read no clips never loads it; a given `builder` is checked at once either way."""
  # Deferred: TensorFlow is only imported once data is needed.
  from videogpt_jax.data import pipeline, preprocess_ops  # pylint: disable=import-outside-toplevel
  data_dir = os.path.expanduser(data_config.get("data_dir") or os.environ.get("TFDS_DATA_DIR")
                                or "~/tensorflow_datasets")
  split = split or data_config.get("eval_split", "test")
  preprocess_ops.checked_spec(data_config.get("pp_eval"), "config.data.pp_eval")  # Before any data is read.
  opened = _Opener(data_config, data_dir, split, builder)
  if builder is not None or not defer:
    opened()
  batch_sharding = sharding.batch_sharding(mesh) if mesh is not None else None
  seq_len, resolution = int(data_config.seq_len), int(data_config.resolution)

  def batches(n_cond_frames: int = 0):
    preprocess = preprocess_ops.checked_spec(data_config.get("pp_eval"), "config.data.pp_eval", n_cond_frames)
    return pipeline.make_eval_iterator(
        opened(), split=split, global_batch_size=batch_size, sharding=batch_sharding, seq_len=seq_len,
        resolution=resolution, n_cond_frames=n_cond_frames, window_stride=window_stride,
        preprocess=preprocess)

  info = {"dataset": data_config.name, "builder_config": data_config.get("builder_config") or "",
          "data_dir": os.path.abspath(data_dir), "split": split, "seq_len": seq_len, "resolution": resolution,
          "window_stride": window_stride, "processes": jax.process_count()}
  platform = platforms.of_devices(mesh.devices.flat if mesh is not None else jax.devices()[:1])
  return base.EvalData(batches=batches, batch_size=batch_size, sharding=batch_sharding, info=info, platform=platform)


class _Opener:
  """The dataset builder of `data_config`, loaded and its `split` checked on the first call, kept after."""

  def __init__(self, data_config: Any, data_dir: str, split: str, builder: Any = None):
    self._data_config, self._data_dir, self._split = data_config, data_dir, split
    self._builder, self._checked = builder, False

  def __call__(self) -> Any:
    if self._builder is None:
      self._builder = _load_builder(self._data_config, self._data_dir)
    if not self._checked:
      _check_split(self._builder, self._data_config.name, self._split)
      self._checked = True
    return self._builder


def _load_builder(data_config: Any, data_dir: str) -> Any:
  # Deferred: TensorFlow is only imported once data is needed.
  from videogpt_jax.data import builders  # pylint: disable=import-outside-toplevel
  logging.info("eval data: opening %s%s in %s", data_config.name,
               f"/{data_config.builder_config}" if data_config.get("builder_config") else "", data_dir)
  return builders.load_builder(data_config.name, data_dir, manual_dir=data_config.get("manual_dir") or None,
                               config=data_config.get("builder_config") or None)


def _check_split(builder: Any, name: str, split: str) -> None:
  if split.split("[")[0] not in builder.info.splits:
    raise ValueError(f"dataset {name} has splits {sorted(builder.info.splits)}; asked for {split!r}")


def numeric(scalars: Mapping[str, Any]) -> dict[str, float]:
  """The entries of `scalars` that TensorBoard can plot (numbers, not flags or per-trial lists)."""
  return {k: float(v) for k, v in scalars.items()
          if isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))}


def run_due(scheduled: list[Scheduled], step: int, total_steps: int, *, vqvae: base.Model, gpt: base.Model | None,
            data: base.EvalData, rng: jax.Array) -> dict[str, dict[str, Any]]:
  """Runs the evaluators due at `step`; returns `{"scalars": {"eval/<name>/<scalar>": x}, "videos": {...}}` in the
  trainers' loop format. Evaluator i samples with `fold_in(fold_in(rng, step), i)`."""
  out: dict[str, dict[str, Any]] = {"scalars": {}, "videos": {}}
  for i, s in enumerate(scheduled):
    if not s.due(step, total_steps):
      continue
    result = s.evaluator.run(vqvae, gpt, data, jax.random.fold_in(jax.random.fold_in(rng, step), i))
    scalars = numeric(result.scalars)
    logging.info("eval %s at step %d: %s", s.name, step, ", ".join(f"{k} {v:.5g}" for k, v in scalars.items()))
    out["scalars"].update({f"eval/{s.name}/{k}": v for k, v in scalars.items()})
    out["videos"].update({f"eval/{s.name}/{k}": v for k, v in result.videos.items()})
  return out
