"""Trains the VideoGPT prior (stage 2) on the codes of a frozen VQ-VAE.

The VQ-VAE is restored from its Orbax checkpoint (`config.vqvae_workdir`); its codebook becomes the prior's
non-trainable `codebook.embeddings`. Codes are either encoded inside the train step from raw clips, or read from
a file written once by `encode_dataset.py` (`config.codes_path`, read by `codes_file.py`). Loss: cross-entropy
over all `t*h*w` tokens; bits/dim = loss / ln 2.
"""
from __future__ import annotations

import math
import os
import pathlib
from typing import Any

import jax
import ml_collections
from absl import logging

from videogpt_jax import inference, sharding
from videogpt_jax.evaluation import suite
from videogpt_jax.train import codes_file, config_checks
from videogpt_jax.train import common, inputs, loop, steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       train_iter: Any = None) -> loop.LoopResult:
  """Trains the prior to `config.total_steps`, resuming from `workdir` if it holds a checkpoint.

  Args:
    config: see `experiments/configs/gpt_*.py`; `config.vqvae_workdir` is required.
    workdir: checkpoints, TensorBoard events and `metrics.jsonl` go here.
    train_iter: optional iterator of global batches (`codes` or `video`, plus `label`/`cond_frames`).
  """
  # --- Logging ---------------------------------------------------------------------------------------------------
  workdir = pathlib.Path(workdir)
  if common.is_main_process():
    workdir.mkdir(parents=True, exist_ok=True)
  writer = common.SummaryWriter(str(workdir / "tensorboard") if config.get("tensorboard", True) else None)
  if not config.get("vqvae_workdir"):
    raise ValueError("config.vqvae_workdir is required: the workdir of a trained VQ-VAE (train_vqvae.py)")
  config_checks.check_moved_fields(config)

  # --- Mesh ------------------------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(config)
  logging.info("mesh: %s over %d devices, %d processes", dict(mesh.shape), mesh.devices.size,
               jax.process_count())

  # --- Frozen VQ-VAE ---------------------------------------------------------------------------------------------
  vqvae_step = int(config.get("vqvae_step", -1))
  vqvae, vq_vars, vq_config = inference.load_vqvae(config.vqvae_workdir, None if vqvae_step < 0 else vqvae_step,
                                                   mesh=mesh)
  logging.info("VQ-VAE from %s: %d codes of dim %d", config.vqvae_workdir, vq_config.model.n_codes,
               vq_config.model.embedding_dim)

  # --- Input pipeline --------------------------------------------------------------------------------------------
  n_cond = int(config.model.get("n_cond_frames", 0))
  builder = None
  if train_iter is None:
    builder = inputs.load_builder(config)
    if config.get("codes_path"):
      train_iter = codes_file.CodesIterator(config.codes_path, global_batch_size=int(config.batch_size),
                                           mesh=mesh, seed=int(config.seed))
    else:
      train_iter = inputs.make_train_iterator(config, mesh, builder, n_cond_frames=n_cond)
  num_classes = int(config.data.get("num_classes", 0)) or None
  if num_classes is None and builder is not None and "label" in builder.info.features:
    num_classes = builder.info.features["label"].num_classes
  config = steps.derive_gpt_config(config, vq_config, num_classes)

  # --- Evaluators (`config.evals`, run through `evaluation.suite`) ------------------------------------------------
  scheduled = suite.from_config(config, has_prior=True)
  data = inputs.make_eval_data(config, mesh, scheduled, builder, n_cond_frames=n_cond)

  # --- Program: model, optimizer, steps, sharded initialisation ------------------------------------------------
  vq_shardings = jax.tree.map(lambda x: x.sharding, vq_vars)
  program = steps.gpt_program(config, mesh, vqvae=vqvae, vqvae_shardings=vq_shardings)
  config, model = program.config, program.model
  eval_rng = jax.random.split(jax.random.key(int(config.seed)), 3)[2]
  state = program.init(program.init_rng)
  codebook_sharding = program.state_shardings.model_state["codebook"]["embeddings"]
  # A copy, never an alias: the state is donated to the step, the VQ-VAE's variables are not.
  state = state.replace(model_state={"codebook": {"embeddings": jax.device_put(
      vq_vars["codebook"]["embeddings"], codebook_sharding, may_alias=False)}})
  summary = common.log_model_summary(state.params, state)
  tokens_per_clip = math.prod(model.shape)
  logging.info("latent grid %s: %d tokens per clip (platform %s)", model.shape, tokens_per_clip, config.platform)

  # --- Checkpoint ------------------------------------------------------------------------------------------------
  checkpointer = common.make_checkpointer(config, workdir)
  state = common.restore_or_keep(checkpointer, state, program.abstract_state, train_iter)

  # --- Evals -----------------------------------------------------------------------------------------------------
  def evals(step: int, state: common.TrainState) -> dict:
    prior = (model, {"params": state.params, **state.model_state})
    return suite.run_due(scheduled, step, int(config.total_steps), vqvae=(vqvae, vq_vars), gpt=prior, data=data,
                         rng=eval_rng)

  # --- Loop ------------------------------------------------------------------------------------------------------
  with jax.set_mesh(mesh):
    step_fn = lambda state, batch: program.train_step(state, batch, vq_vars)
    _, result = loop.run_loop(
        config=config, state=state, train_step=step_fn, batches=train_iter, data_state=train_iter.state,
        checkpointer=checkpointer, writer=writer, items_per_step=int(config.batch_size) * tokens_per_clip,
        item_name="tokens", evals=evals if data is not None else None, metrics_file=workdir / "metrics.jsonl")
  checkpointer.close()
  logging.info("done at step %d (%s); %s parameters", result.step, result.stopped, f"{summary['num_params']:,}")
  return result
