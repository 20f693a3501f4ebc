"""Trains the VideoGPT VQ-VAE (stage 1): reconstruction + commitment loss, EMA codebook, BatchNorm statistics.

`train_and_evaluate(config, workdir)` runs from the latest checkpoint in `workdir/checkpoints` (or from scratch)
to `config.total_steps`. The codebook EMA and BatchNorm statistics are plain reductions over the batch inside
the jitted step; with the batch sharded over the mesh they are global-batch statistics.
"""
from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from videogpt_jax import sharding
from videogpt_jax.models import vqvae as vqvae_lib
from videogpt_jax.train import common, loop

_MUTABLE = ("batch_stats", "codebook")


def build_model(config: Any) -> vqvae_lib.VQVAE:
  """The VQ-VAE of `config.model` (module arguments, verbatim)."""
  kwargs = dict(config.model)
  if "downsample" in kwargs:
    kwargs["downsample"] = tuple(kwargs["downsample"])
  return vqvae_lib.VQVAE(**kwargs)


def video_shape(config: Any) -> tuple[int, int, int, int]:
  """`(T, H, W, 3)` of the training clips."""
  return (int(config.data.seq_len), int(config.data.resolution), int(config.data.resolution), 3)


def init_fn(config: Any, model: vqvae_lib.VQVAE, tx: optax.GradientTransformation):
  """`rng -> TrainState` (parameters boxed with their logical axis names, for `common.sharded_init`)."""
  model.latent_shape(video_shape(config))  # Fails early, naming the shapes, if the clip does not downsample.

  def init(rng):
    params_rng, codebook_rng = jax.random.split(rng)
    variables = model.init({"params": params_rng, "codebook": codebook_rng},
                           jnp.zeros((1, *video_shape(config)), jnp.float32), train=False)
    params = variables["params"]
    return common.TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params),
                             model_state={k: variables[k] for k in _MUTABLE if k in variables})

  return init


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
    builder = common.load_builder(config)
    train_iter = common.make_train_iterator(config, mesh, builder)
    if config.get("eval_every"):
      eval_iter = common.make_eval_iterator(config, mesh, builder)

  # --- Model, optimizer, sharded initialisation ------------------------------------------------------------------
  model = build_model(config)
  tx = common.make_optimizer(config)
  schedule = common.learning_rate_schedule(config)
  rng = jax.random.key(int(config.seed))
  init_rng, step_rng = jax.random.split(rng)
  state, shardings, abstract = common.sharded_init(init_fn(config, model, tx), init_rng, mesh)
  summary = common.log_model_summary(state.params, state)
  logging.info("latent grid %s per clip %s", model.latent_shape(video_shape(config)), video_shape(config))
  sharding.log_shardings(state.params)

  # --- Checkpoint ------------------------------------------------------------------------------------------------
  checkpointer = common.make_checkpointer(config, workdir)
  state = common.restore_or_keep(checkpointer, state, abstract, train_iter)

  # --- Update step -----------------------------------------------------------------------------------------------
  compute_dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  policy = common.remat_policy(config.get("remat"))

  def train_step(state: common.TrainState, batch: dict[str, jax.Array]):
    video = batch["video"].astype(compute_dtype)

    def loss_fn(params):
      variables = {"params": common.cast_floats(params, compute_dtype), **state.model_state}
      (_, aux), new_model_state = model.apply(variables, video, train=True, mutable=list(_MUTABLE),
                                              rngs={"codebook": jax.random.fold_in(step_rng, state.step)})
      return aux["loss"], (aux, new_model_state)

    if policy is not None:
      loss_fn = jax.checkpoint(loss_fn, policy=policy)
    (loss, (aux, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # bf16 compute may return bf16 statistics; the state keeps its dtypes so the step compiles once.
    new_model_state = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), new_model_state,
                                   state.model_state)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "recon_loss": aux["recon_loss"], "commitment_loss": aux["commitment_loss"],
               "perplexity": aux["perplexity"], "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
               "finite": jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves((params, opt_state))]))}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         model_state=new_model_state), metrics

  batch_sharding = sharding.batch_sharding(mesh)
  train_step = jax.jit(train_step, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None),
                       donate_argnums=(0,))

  # --- Evals -----------------------------------------------------------------------------------------------------
  @functools.partial(jax.jit, in_shardings=(shardings, batch_sharding))
  def eval_step(state: common.TrainState, batch: dict[str, jax.Array]):
    recon, _ = model.apply({"params": state.params, **state.model_state}, batch["video"], train=False)
    per_clip = jnp.mean((recon - batch["video"]) ** 2, axis=(1, 2, 3, 4)) / vqvae_lib.RECON_LOSS_SCALE
    mask = batch["mask"].astype(jnp.float32)
    return jnp.sum(per_clip * mask), jnp.sum(mask), recon

  def evals(step: int, state: common.TrainState) -> dict:
    if eval_iter is None:
      return {}
    total, count, shown = 0.0, 0.0, None
    for i, batch in enumerate(eval_iter):
      if config.get("eval_batches") and i >= int(config.eval_batches):
        break
      s, n, recon = eval_step(state, batch)
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
        config=config, state=state, train_step=train_step, batches=train_iter, data_state=train_iter.state,
        checkpointer=checkpointer, writer=writer, items_per_step=int(config.batch_size), item_name="clips",
        evals=evals, metrics_file=workdir / "metrics.jsonl")
  checkpointer.close()
  logging.info("done at step %d (%s); %s parameters", result.step, result.stopped, f"{summary['num_params']:,}")
  return result
