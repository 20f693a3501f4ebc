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
import numpy as np
from absl import logging

from videogpt_jax import sharding
from videogpt_jax.models import vqvae as vqvae_lib
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
  eval_iter = None
  if train_iter is None:
    builder = inputs.load_builder(config)
    train_iter = inputs.make_train_iterator(config, mesh, builder)
    if config.get("eval_every"):
      eval_iter = inputs.make_eval_iterator(config, mesh, builder)

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
  def evals(step: int, state: common.TrainState) -> dict:
    eval_every = int(config.get("eval_every", 0) or 0)
    if eval_iter is None or not eval_every or (step % eval_every and step != int(config.total_steps)):
      return {}
    total, count, shown = 0.0, 0.0, None
    for i, batch in enumerate(eval_iter):
      if config.get("eval_batches") and i >= int(config.eval_batches):
        break
      s, n, recon = program.eval_step(state, batch)
      total, count = total + float(s), count + float(n)
      if shown is None:  # Originals above their reconstructions, first batch only.
        k = min(4, batch["video"].shape[0])
        shown = np.concatenate([sharding.to_host(batch["video"])[:k],
                                np.clip(sharding.to_host(recon)[:k], -0.5, 0.5)])
    scalars = {"eval/recon_loss": total / max(count, 1.0)}
    logging.info("eval at step %d: recon_loss %.4f over %d clips", step, scalars["eval/recon_loss"], int(count))
    return {"scalars": scalars, "videos": {"eval/reconstructions": shown}}

  # --- Loop ------------------------------------------------------------------------------------------------------
  with jax.set_mesh(mesh):
    _, result = loop.run_loop(
        config=config, state=state, train_step=program.train_step, batches=train_iter, data_state=train_iter.state,
        checkpointer=checkpointer, writer=writer, items_per_step=int(config.batch_size), item_name="clips",
        evals=evals, metrics_file=workdir / "metrics.jsonl")
  checkpointer.close()
  logging.info("done at step %d (%s); %s parameters", result.step, result.stopped, f"{summary['num_params']:,}")
  return result


# Names kept for callers that still assemble their own step (`train/aot_steps.py`, tests): `train.steps` builds it.
build_model = vqvae_lib.vqvae_from_config
video_shape = steps.video_shape


def init_fn(config: Any, model: vqvae_lib.VQVAE, tx: Any):
  return steps.vqvae_init_fn(model, steps.video_shape(config), tx)
