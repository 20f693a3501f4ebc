"""Trains the VideoGPT VQ-VAE (stage 1): reconstruction + commitment loss, EMA codebook, BatchNorm statistics.

`train_and_evaluate(config, workdir)` runs from the latest checkpoint in `workdir/checkpoints` (or from scratch)
to `config.total_steps`. The codebook EMA and BatchNorm statistics are plain reductions over the batch inside
the jitted step; with the batch sharded over the mesh they are global-batch statistics.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import ml_collections
from absl import logging

from videogpt_jax import sharding
from videogpt_jax.evaluation import suite
from videogpt_jax.train import common, inputs, loop, steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       train_iter: Any = None) -> loop.LoopResult:
  """Trains to `config.total_steps`, resuming from `workdir` if it holds a checkpoint.

  Args:
    config: see `experiments/configs/vqvae_*.py`.
    workdir: checkpoints, TensorBoard events and `metrics.jsonl` go here.
    train_iter: optional iterator of global batches (with `state()`/`restore()`), instead of `config.data`.
  """
  # --- Logging ---------------------------------------------------------------------------------------------------
  workdir = pathlib.Path(workdir)
  if common.is_main_process():
    workdir.mkdir(parents=True, exist_ok=True)
  writer = common.SummaryWriter(str(workdir / "tensorboard") if config.get("tensorboard", True) else None)

  # --- Mesh ------------------------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(config)
  logging.info("mesh: %s over %d devices, %d processes", dict(mesh.shape), mesh.devices.size,
               jax.process_count())

  # --- Input pipeline --------------------------------------------------------------------------------------------
  builder = None
  if train_iter is None:
    builder = inputs.load_builder(config)
    train_iter = inputs.make_train_iterator(config, mesh, builder)

  # --- Evaluators (`config.evals`, run through `evaluation.suite`) ------------------------------------------------
  scheduled = suite.from_config(config, has_prior=False)
  data = inputs.make_eval_data(config, mesh, scheduled, builder)

  # --- Program: model, optimizer, steps, sharded initialisation ------------------------------------------------
  program = steps.vqvae_program(config, mesh)
  config, model = program.config, program.model
  state = program.init(program.init_rng)
  summary = common.log_model_summary(state.params, state)
  logging.info("latent grid %s per clip %s (platform %s)", model.latent_shape(steps.video_shape(config)),
               steps.video_shape(config), config.platform)
  sharding.log_shardings(state.params)

  # --- Checkpoint ------------------------------------------------------------------------------------------------
  checkpointer = common.make_checkpointer(config, workdir)
  state = common.restore_or_keep(checkpointer, state, program.abstract_state, train_iter)

  # --- Evals -----------------------------------------------------------------------------------------------------
  eval_rng = jax.random.key(int(config.seed))

  def evals(step: int, state: common.TrainState) -> dict:
    variables = {"params": state.params, **state.model_state}
    return suite.run_due(scheduled, step, int(config.total_steps), vqvae=(model, variables), gpt=None, data=data,
                         rng=eval_rng)

  # --- Loop ------------------------------------------------------------------------------------------------------
  with jax.set_mesh(mesh):
    _, result = loop.run_loop(
        config=config, state=state, train_step=program.train_step, batches=train_iter, data_state=train_iter.state,
        checkpointer=checkpointer, writer=writer, items_per_step=int(config.batch_size), item_name="clips",
        evals=evals if data is not None else None, metrics_file=workdir / "metrics.jsonl")
  checkpointer.close()
  logging.info("done at step %d (%s); %s parameters", result.step, result.stopped, f"{summary['num_params']:,}")
  return result
