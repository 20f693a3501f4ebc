"""A config's train step with abstract, sharded arguments over given devices: what the AOT compile tool lowers.

No data, checkpoint or parameter is touched: the state is `jax.eval_shape` of the trainer's init, its shardings
come from the logical-axis rules over the config's mesh, and the batch is the shape the input pipeline feeds.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from videogpt_jax import aot, sharding
from videogpt_jax.train import common, gpt_trainer, vqvae_trainer

_MUTABLE = ("batch_stats", "codebook")


def stage(config: Any) -> str:
  """"gpt" for a prior's config (it names a VQ-VAE run), else "vqvae"."""
  return "gpt" if "vqvae_workdir" in config else "vqvae"


def _for_tpu(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The formulations a TPU runs: the models pick them by their `platform` argument, which defaults to this
  host's CPU."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.model.platform = "tpu"
  return out


def _abstract(shape, dtype, mesh) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh))


def vqvae_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """`(jitted train step, abstract args)` of the VQ-VAE trainer for `config` over `mesh`."""
  model = vqvae_trainer.build_model(config)
  tx = common.make_optimizer(config)
  schedule = common.learning_rate_schedule(config)
  shardings, abstract = common.abstract_state(vqvae_trainer.init_fn(config, model, tx), mesh)
  compute_dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  policy = common.remat_policy(config.get("remat"))
  step_rng = jax.random.key(0)

  def train_step(state, batch):
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
    new_model_state = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), new_model_state,
                                   state.model_state)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state, model_state=new_model_state), metrics

  batch_sharding = sharding.batch_sharding(mesh)
  jitted = jax.jit(train_step, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, None),
                   donate_argnums=(0,))
  batch = {"video": _abstract((int(config.batch_size), *vqvae_trainer.video_shape(config)), jnp.float32, mesh)}
  return jitted, (abstract, batch)


def gpt_step(config: ml_collections.ConfigDict, vqvae_config: ml_collections.ConfigDict,
             mesh: jax.sharding.Mesh):
  """`(jitted train step, abstract args)` of the prior's trainer, on pre-encoded codes."""
  vqvae = vqvae_trainer.build_model(vqvae_config)
  num_classes = int(config.data.get("num_classes", 0)) or None
  config = gpt_trainer.derive(config, vqvae_config, vqvae, num_classes)
  model = gpt_trainer.build_model(config)
  tx = common.make_optimizer(config)
  schedule = common.learning_rate_schedule(config)
  shardings, abstract = common.abstract_state(gpt_trainer.init_fn(config, model, tx), mesh)
  policy = common.remat_policy(config.get("remat"))
  step_rng = jax.random.key(0)

  def train_step(state, batch):
    codes = batch["codes"]
    cond = model.cond_from_batch(batch)

    def loss_fn(params):
      logits = model.apply({"params": params, **state.model_state}, codes, cond, deterministic=False,
                           rngs={"dropout": jax.random.fold_in(step_rng, state.step)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, codes).mean()

    if policy is not None:
      loss_fn = jax.checkpoint(loss_fn, policy=policy)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), metrics

  b = int(config.batch_size)
  batch = {"codes": _abstract((b, *model.shape), jnp.int32, mesh)}
  if model.n_cond_frames:
    batch["cond_frames"] = _abstract((b, model.n_cond_frames, *model.frame_shape, 3), jnp.float32, mesh)
  if model.class_cond_dim:
    batch["label"] = _abstract((b,), jnp.int32, mesh)
  jitted = jax.jit(train_step, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(shardings, None), donate_argnums=(0,))
  return jitted, (abstract, batch)


def compile_train_step(config: ml_collections.ConfigDict, devices: Sequence[jax.Device], *,
                       vqvae_config: ml_collections.ConfigDict | None = None):
  """Compiles `config`'s train step over `devices` (all of them, in `config.mesh`); `(aot.Report, compiled)`."""
  config = _for_tpu(config)
  mesh = sharding.make_mesh(config, devices=devices)
  sharding.batch_size_per_process(int(config.batch_size), mesh)
  if stage(config) == "gpt":
    if vqvae_config is None:
      raise ValueError("a prior's config needs its VQ-VAE config (the code grid and codebook size)")
    jitted, args = gpt_step(config, _for_tpu(vqvae_config), mesh)
  else:
    jitted, args = vqvae_step(config, mesh)
  with jax.set_mesh(mesh):
    report, compiled = aot.compile_step(lambda: jitted.lower(*args), devices)
  report.mesh = dict(mesh.shape)
  return report, compiled

