"""The trainers' input pipelines from a config: the TFDS builder, train and eval iterators sharded over a mesh,
and the evaluators' clips (`evaluation.suite.eval_data`).

Kept apart from `common.py` because it imports TensorFlow (through `videogpt_jax.data`): the train steps, the
inference loader and the compile tool need none of it.
"""
from __future__ import annotations

import os
from typing import Any

import jax

from videogpt_jax import sharding
from videogpt_jax.data import builders, pipeline, preprocess_ops
from videogpt_jax.evaluation import base, suite


def data_dir(config: Any) -> str:
  """`config.data.data_dir`, defaulting to `$TFDS_DATA_DIR` or `~/tensorflow_datasets`."""
  return os.path.expanduser(config.data.get("data_dir") or os.environ.get("TFDS_DATA_DIR")
                            or "~/tensorflow_datasets")


def load_builder(config: Any):
  """The prepared TFDS builder of `config.data` (built first if needed; a missing manual download raises the
  builder's `ManualDataError`, whose message says what to put where)."""
  return builders.load_builder(config.data.name, data_dir(config), manual_dir=config.data.get("manual_dir") or None,
                               config=config.data.get("builder_config") or None)


def make_train_iterator(config: Any, mesh: jax.sharding.Mesh, builder=None, *, n_cond_frames: int = 0):
  """Global batches of `config.batch_size` random windows, sharded over the mesh's batch axes; the iterator
  has `state()`/`restore()` for exact resumption. `config.data.pp_train` replaces the default preprocessing."""
  sharding.batch_size_per_process(int(config.batch_size), mesh)
  preprocess = preprocess_ops.checked_spec(config.data.get("pp_train"), "config.data.pp_train", n_cond_frames)
  return pipeline.make_train_iterator(
      builder or load_builder(config), split=config.data.get("split", "train"),
      global_batch_size=int(config.batch_size), sharding=sharding.batch_sharding(mesh),
      seq_len=int(config.data.seq_len), resolution=int(config.data.resolution), seed=int(config.seed),
      n_cond_frames=n_cond_frames, shuffle_buffer=int(config.data.get("shuffle_buffer", 2048)),
      preprocess=preprocess)


def make_eval_iterator(config: Any, mesh: jax.sharding.Mesh, builder=None, *, n_cond_frames: int = 0):
  """One padded pass (`mask`) over `config.data.eval_split` with fixed windows, sharded like training;
  `config.data.pp_eval` replaces the default preprocessing."""
  preprocess = preprocess_ops.checked_spec(config.data.get("pp_eval"), "config.data.pp_eval", n_cond_frames)
  return pipeline.make_eval_iterator(
      builder or load_builder(config), split=config.data.get("eval_split", "test"),
      global_batch_size=int(config.get("eval_batch_size") or config.batch_size),
      sharding=sharding.batch_sharding(mesh), seq_len=int(config.data.seq_len),
      resolution=int(config.data.resolution), n_cond_frames=n_cond_frames, preprocess=preprocess)


def make_eval_data(config: Any, mesh: jax.sharding.Mesh, scheduled: list[suite.Scheduled], builder=None, *,
                   n_cond_frames: int = 0) -> base.EvalData | None:
  """The clips the trainer's evaluators read (`config.data`, `config.eval_batch_size` rows a batch, default
  `config.batch_size`), opened on first use; None when no evaluator of `scheduled` runs during training.
  `config.data.pp_eval` is checked here, for the model's `n_cond_frames`, before anything trains."""
  preprocess_ops.checked_spec(config.data.get("pp_eval"), "config.data.pp_eval", n_cond_frames)
  if not any(s.every for s in scheduled):
    return None
  return suite.eval_data(config.data, mesh, batch_size=int(config.get("eval_batch_size") or config.batch_size),
                         builder=builder, defer=True)
