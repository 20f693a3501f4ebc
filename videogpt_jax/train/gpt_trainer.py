"""Trains the VideoGPT prior (stage 2) on the codes of a frozen VQ-VAE.

The VQ-VAE is restored from its Orbax checkpoint (`config.vqvae_workdir`); its codebook becomes the prior's
non-trainable `codebook.embeddings`. Codes are either encoded inside the train step from raw clips, or read from
a file written once by `encode_dataset.py` (`config.codes_path`). Loss: cross-entropy over all `t*h*w` tokens;
bits/dim = loss / ln 2.
"""
from __future__ import annotations

import functools
import math
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

import videogpt_jax
from videogpt_jax import sharding
from videogpt_jax.models import conditioning
from videogpt_jax.models import gpt as gpt_lib
from videogpt_jax.models import sampling
from videogpt_jax.train import common, encode_dataset, load, loop


def derive(config: ml_collections.ConfigDict, vqvae_config: Any, vqvae, num_classes: int | None
           ) -> ml_collections.ConfigDict:
  """A copy of `config` with `derived` filled in from the VQ-VAE: what a checkpoint needs to rebuild the GPT."""
  out = ml_collections.ConfigDict(config.to_dict())
  res = int(config.data.resolution)
  if int(vqvae_config.data.resolution) != res:
    raise ValueError(f"config.data.resolution={res} differs from the VQ-VAE's {vqvae_config.data.resolution}")
  class_cond = bool(config.model.get("class_cond", False))
  if class_cond and not num_classes:
    raise ValueError(f"config.model.class_cond=True but dataset {config.data.name!r} has no labels")
  out.derived = ml_collections.ConfigDict(dict(
      shape=tuple(vqvae.latent_shape((int(config.data.seq_len), res, res))),
      n_codes=int(vqvae_config.model.n_codes), embedding_dim=int(vqvae_config.model.embedding_dim),
      frame_shape=(res, res), class_cond_dim=int(num_classes) if class_cond else 0))
  return out


def build_model(config: Any) -> gpt_lib.GPT:
  """The GPT of `config.model` (+ `config.derived`, see `derive`)."""
  # Lists come back from a checkpoint's JSON config; the module needs hashable tuples (jit caches key on it).
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config.model).items()}
  class_cond = kwargs.pop("class_cond", False)
  d = config.derived
  return gpt_lib.GPT(shape=tuple(d.shape), n_codes=int(d.n_codes), embedding_dim=int(d.embedding_dim),
                     frame_shape=tuple(d.frame_shape) if kwargs.get("n_cond_frames") else None,
                     class_cond_dim=int(d.class_cond_dim) if class_cond else None,
                     dtype=jnp.dtype(config.get("compute_dtype", "float32")), **kwargs)


def _example_inputs(model: gpt_lib.GPT, batch: int = 1):
  codes = jnp.zeros((batch, *model.shape), jnp.int32)
  frames = (jnp.zeros((batch, model.n_cond_frames, *model.frame_shape, 3), jnp.float32)
            if model.n_cond_frames else None)
  labels = jnp.zeros((batch,), jnp.int32) if model.class_cond_dim else None
  return codes, conditioning.make_cond(frames, labels)


def init_fn(config: Any, model: gpt_lib.GPT, tx: optax.GradientTransformation):
  """`rng -> TrainState`; `model_state["codebook"]` is a placeholder until the VQ-VAE's is put in."""
  del config

  def init(rng):
    codes, cond = _example_inputs(model)
    variables = model.init({"params": rng}, codes, cond, deterministic=True)
    params = variables["params"]
    return common.TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params),
                             model_state={"codebook": variables["codebook"]})

  return init


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

  # --- Mesh ------------------------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(config)
  logging.info("mesh: %s over %d devices, %d processes", dict(mesh.shape), mesh.devices.size,
               jax.process_count())

  # --- Frozen VQ-VAE ---------------------------------------------------------------------------------------------
  vqvae_step = int(config.get("vqvae_step", -1))
  vqvae, vq_vars, vq_config = load.load_vqvae(config.vqvae_workdir, None if vqvae_step < 0 else vqvae_step,
                                              mesh=mesh)
  logging.info("VQ-VAE from %s: %d codes of dim %d", config.vqvae_workdir, vq_config.model.n_codes,
               vq_config.model.embedding_dim)

  # --- Input pipeline --------------------------------------------------------------------------------------------
  n_cond = int(config.model.get("n_cond_frames", 0))
  builder, eval_iter = None, None
  if train_iter is None or config.get("eval_every"):
    builder = common.load_builder(config)
  if train_iter is None:
    if config.get("codes_path"):
      train_iter = encode_dataset.CodesIterator(config.codes_path, global_batch_size=int(config.batch_size),
                                                mesh=mesh, seed=int(config.seed))
    else:
      train_iter = common.make_train_iterator(config, mesh, builder, n_cond_frames=n_cond)
  if config.get("eval_every"):
    eval_iter = common.make_eval_iterator(config, mesh, builder, n_cond_frames=n_cond)
  num_classes = int(config.data.get("num_classes", 0)) or None
  if num_classes is None and builder is not None and "label" in builder.info.features:
    num_classes = builder.info.features["label"].num_classes
  config = derive(config, vq_config, vqvae, num_classes)

  # --- Model, optimizer, sharded initialisation ------------------------------------------------------------------
  model = build_model(config)
  tx = common.make_optimizer(config)
  schedule = common.learning_rate_schedule(config)
  init_rng, step_rng, sample_rng = jax.random.split(jax.random.key(int(config.seed)), 3)
  state, shardings, abstract = common.sharded_init(init_fn(config, model, tx), init_rng, mesh)
  codebook_sharding = shardings.model_state["codebook"]["embeddings"]
  # A copy, never an alias: the state is donated to the step, the VQ-VAE's variables are not.
  state = state.replace(model_state={"codebook": {"embeddings": jax.device_put(
      vq_vars["codebook"]["embeddings"], codebook_sharding, may_alias=False)}})
  summary = common.log_model_summary(state.params, state)
  tokens_per_clip = math.prod(model.shape)
  logging.info("latent grid %s: %d tokens per clip", model.shape, tokens_per_clip)

  # --- Checkpoint ------------------------------------------------------------------------------------------------
  checkpointer = common.make_checkpointer(config, workdir)
  state = common.restore_or_keep(checkpointer, state, abstract, train_iter)

  # --- Update step -----------------------------------------------------------------------------------------------
  policy = common.remat_policy(config.get("remat"))
  vq_shardings = jax.tree.map(lambda x: x.sharding, vq_vars)

  def inputs(batch, vq_vars):
    codes = batch["codes"] if "codes" in batch else vqvae.apply(
        vq_vars, batch["video"], method=type(vqvae).encode_to_indices)
    return jax.lax.stop_gradient(codes), model.cond_from_batch(batch)

  def loss_and_logits(params, state, batch, vq_vars, deterministic, rng):
    codes, cond = inputs(batch, vq_vars)
    logits = model.apply({"params": params, **state.model_state}, codes, cond,
                         deterministic=deterministic, rngs={"dropout": rng})
    per_clip = optax.softmax_cross_entropy_with_integer_labels(logits, codes).mean(axis=(1, 2, 3))
    return per_clip

  def train_step(state: common.TrainState, batch: dict[str, jax.Array], vq_vars):
    def loss_fn(params):
      return jnp.mean(loss_and_logits(params, state, batch, vq_vars, False,
                                      jax.random.fold_in(step_rng, state.step)))

    if policy is not None:
      loss_fn = jax.checkpoint(loss_fn, policy=policy)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "bits_per_dim": loss / jnp.log(2.0), "grad_norm": optax.tree.norm(grads),
               "lr": schedule(state.step),
               "finite": jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves((params, opt_state))]))}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  batch_sharding = sharding.batch_sharding(mesh)
  train_step = jax.jit(train_step, in_shardings=(shardings, batch_sharding, vq_shardings),
                       out_shardings=(shardings, None), donate_argnums=(0,))

  # --- Evals -----------------------------------------------------------------------------------------------------
  @functools.partial(jax.jit, in_shardings=(shardings, batch_sharding, vq_shardings))
  def eval_step(state, batch, vq_vars):
    per_clip = loss_and_logits(state.params, state, batch, vq_vars, True, step_rng)
    mask = batch["mask"].astype(jnp.float32)
    return jnp.sum(per_clip * mask), jnp.sum(mask)

  def evals(step: int, state: common.TrainState) -> dict:
    out: dict[str, Any] = {"scalars": {}, "videos": {}}
    first = None
    if eval_iter is not None:
      total, count = 0.0, 0.0
      for i, batch in enumerate(eval_iter):
        if config.get("eval_batches") and i >= int(config.eval_batches):
          break
        first = first or batch
        s, n = eval_step(state, batch, vq_vars)
        total, count = total + float(s), count + float(n)
      loss = total / max(count, 1.0)
      out["scalars"] = {"eval/loss": loss, "eval/bits_per_dim": loss / math.log(2)}
      logging.info("eval at step %d: loss %.4f (%.4f bits/dim) over %d clips", step, loss, loss / math.log(2),
                   int(count))
    sample_every = int(config.get("sample_every", 0) or 0)
    if sample_every and (step % sample_every == 0 or step == int(config.total_steps)):
      out["videos"]["samples"] = _samples(step, state, first)
    return out

  def _samples(step, state, batch):
    n = int(config.num_samples)
    cond = {}
    if n_cond or model.class_cond_dim:
      if batch is None or batch["video"].shape[0] < n:
        logging.warning("no eval batch of %d clips to condition samples on; skipping samples", n)
        return None
      cond = {k: sharding.to_host(v)[:n] for k, v in model.cond_from_batch(batch).items()}
    variables = {"params": state.params, **state.model_state}
    codes = videogpt_jax.sample(model, variables, jax.random.fold_in(sample_rng, step), n, cond=cond)
    video = sharding.to_host(sampling.decode_to_video(vqvae, vq_vars, codes))
    return video.astype(np.float32) / 255.0 - 0.5

  # --- Loop ------------------------------------------------------------------------------------------------------
  with jax.set_mesh(mesh):
    step_fn = lambda state, batch: train_step(state, batch, vq_vars)
    _, result = loop.run_loop(
        config=config, state=state, train_step=step_fn, batches=train_iter, data_state=train_iter.state,
        checkpointer=checkpointer, writer=writer, items_per_step=int(config.batch_size) * tokens_per_clip,
        item_name="tokens", evals=evals, metrics_file=workdir / "metrics.jsonl")
  checkpointer.close()
  logging.info("done at step %d (%s); %s parameters", result.step, result.stopped, f"{summary['num_params']:,}")
  return result
