"""The losses and the jitted train steps of both stages, and the program a config compiles to.

Everything that differentiates a loss is here: the trainers, the benchmarks and the ahead-of-time compile tool
build their steps with these functions, so what is timed or compiled is what trains.

- Losses, module-level so that tests and tools can take gradients of exactly the trained loss: `vqvae_loss`,
  `gpt_loss` (and `gpt_clip_losses`, the per-clip losses it averages).
- Steps: `make_vqvae_train_step`, `make_gpt_train_step`: loss, gradient, optimizer (clipping and schedule are
  inside `optimizer`), EMA-codebook and BatchNorm-statistic updates, donation of the state, input and output
  shardings. Evaluation is not here: the trainers run `config.evals` through `videogpt_jax.evaluation.suite`.
- Programs: `vqvae_program(config, mesh)` and `gpt_program(config, mesh)` go from a config and a mesh to a
  `TrainProgram` (the model, the jitted train step, the abstract state with its shardings, the abstract batch) without
  data or a checkpoint: the trainers run it, `experiments/compile.py` lowers it for a TPU slice.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from videogpt_jax import sharding
from videogpt_jax.evaluation import metrics
from videogpt_jax.models import gpt as gpt_lib
from videogpt_jax.models import vqvae as vqvae_lib
from videogpt_jax.train import common

# The VQ-VAE's collections that its forward pass updates in training (see `models/vqvae.py`).
VQVAE_MUTABLE = ("batch_stats", "codebook")


# ---------------------------------------------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------------------------------------------
def vqvae_loss(model: vqvae_lib.VQVAE, params: Any, model_state: Mapping[str, Any], video: jax.Array,
               rng: jax.Array, compute_dtype: Any = jnp.float32) -> tuple[jax.Array, tuple[dict, dict]]:
  """The VQ-VAE's training loss (reconstruction MSE / 0.06 + commitment), as its trainer differentiates it.

  Args:
    params: float32 parameters; the forward runs on a `compute_dtype` copy (gradients come back float32).
    model_state: `batch_stats` and `codebook`.
    video: `(B, T, H, W, 3)` in [-0.5, 0.5].
    rng: the codebook's random restarts.
  Returns:
    `(loss, (aux, new_model_state))`: aux as `VQVAE.__call__` returns it, the updated statistics.
  """
  variables = {"params": common.cast_floats(params, compute_dtype), **model_state}
  (_, aux), new_model_state = model.apply(variables, video.astype(compute_dtype), train=True,
                                          mutable=list(VQVAE_MUTABLE), rngs={"codebook": rng})
  return aux["loss"], (aux, new_model_state)


def gpt_clip_losses(model: gpt_lib.GPT, params: Any, model_state: Mapping[str, Any], batch: Mapping[str, Any],
                    rng: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
  """Per-clip mean cross-entropy `(B,)` in nats of the codes `batch["codes"] (B, t, h, w)` (plus `cond_frames` /
  `label` for a conditional prior); `rng` drives dropout when `deterministic=False`."""
  codes = jax.lax.stop_gradient(batch["codes"])
  logits = model.apply({"params": params, **model_state}, codes, model.cond_from_batch(batch),
                       deterministic=deterministic, rngs={"dropout": rng} if rng is not None else {})
  return metrics.token_cross_entropy(logits, codes).mean(axis=(1, 2, 3))


def gpt_loss(model: gpt_lib.GPT, params: Any, model_state: Mapping[str, Any], batch: Mapping[str, Any],
             rng: jax.Array | None = None, deterministic: bool = False) -> jax.Array:
  """The prior's training loss: cross-entropy in nats over all tokens of the batch (see `gpt_clip_losses`)."""
  return jnp.mean(gpt_clip_losses(model, params, model_state, batch, rng, deterministic))


def all_finite(*trees: Any) -> jax.Array:
  """Scalar bool: every floating leaf of `trees` is finite (one fused reduction inside a jitted step)."""
  leaves = [x for x in jax.tree.leaves(trees) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


# ---------------------------------------------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------------------------------------------
def _update(optimizer: optax.GradientTransformation, schedule: optax.Schedule, state: common.TrainState,
            grads: Any) -> tuple[Any, Any, dict[str, jax.Array]]:
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  update_metrics = {"grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
                    "finite": all_finite(params, opt_state)}
  return params, opt_state, update_metrics


def make_vqvae_train_step(model: vqvae_lib.VQVAE, optimizer: optax.GradientTransformation,
                          schedule: optax.Schedule, *, state_shardings: Any, batch_sharding: Any, rng: jax.Array,
                          compute_dtype: Any = jnp.float32, donate: bool = True) -> Callable:
  """The jitted VQ-VAE update `(state, batch) -> (state, metrics)`.

  Args:
    optimizer: e.g. `common.make_optimizer(config)` (clipping and the schedule are inside it).
    schedule: the learning rate it follows (reported as `lr`).
    state_shardings: `TrainState` of shardings (`program.state_shardings`); the state keeps them.
    batch_sharding: sharding of every batch leaf (`sharding.batch_sharding(mesh)`); the batch has `video`.
    rng: base key of the codebook restarts, folded with the step.
    compute_dtype: dtype of the forward pass (parameters and optimizer state stay float32).
    donate: reuse the incoming state's buffers for the new state.
  Metrics: `loss`, `recon_loss`, `commitment_loss`, `perplexity`, `grad_norm`, `lr`, and `finite` (every leaf of
  the new parameters and optimizer state is finite).
  """

  def step(state: common.TrainState, batch: Mapping[str, jax.Array]):
    loss_fn = lambda p: vqvae_loss(model, p, state.model_state, batch["video"],
                                   jax.random.fold_in(rng, state.step), compute_dtype)
    (loss, (aux, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # bf16 compute may return bf16 statistics; the state keeps its dtypes so the step compiles once.
    model_state = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), model_state, state.model_state)
    params, opt_state, update_metrics = _update(optimizer, schedule, state, grads)
    out = {"loss": loss, "recon_loss": aux["recon_loss"], "commitment_loss": aux["commitment_loss"],
           "perplexity": aux["perplexity"], **update_metrics}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state), out

  return jax.jit(step, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
                 donate_argnums=(0,) if donate else ())


def _with_codes(batch: Mapping[str, jax.Array], vqvae: vqvae_lib.VQVAE | None, vqvae_variables: Any) -> dict:
  """`batch` with `codes`: as given, or encoded from `batch["video"]` by the frozen VQ-VAE."""
  if "codes" in batch or vqvae is None:
    return dict(batch)
  return {**batch, "codes": vqvae.apply(vqvae_variables, batch["video"], method=type(vqvae).encode_to_indices)}


def make_gpt_train_step(model: gpt_lib.GPT, optimizer: optax.GradientTransformation, schedule: optax.Schedule, *,
                        state_shardings: Any, batch_sharding: Any, rng: jax.Array,
                        vqvae: vqvae_lib.VQVAE | None = None, vqvae_shardings: Any = None,
                        donate: bool = True) -> Callable:
  """The jitted prior update: `(state, batch) -> (state, metrics)`, or with `vqvae`
  `(state, batch, vqvae_variables) -> (state, metrics)`, where a batch without `codes` is encoded from its `video`
  inside the step.

  Args:
    model: the prior (its `dtype` is the compute dtype); `state.model_state["codebook"]` is the VQ-VAE's.
    batch_sharding: sharding of every batch leaf; the batch has `codes (B, t, h, w)` (or `video`), plus
      `cond_frames` / `label` for a conditional prior.
    rng: base key of dropout, folded with the step.
    vqvae, vqvae_shardings: the frozen VQ-VAE and the shardings of its variables, to encode clips on the fly.
  Metrics: `loss` (nats), `bits_per_dim`, `grad_norm`, `lr`, `finite` (as in `make_vqvae_train_step`).
  """

  def step(state: common.TrainState, batch: Mapping[str, jax.Array], vqvae_variables: Any = None):
    batch = _with_codes(batch, vqvae, vqvae_variables)
    loss_fn = lambda p: gpt_loss(model, p, state.model_state, batch, jax.random.fold_in(rng, state.step))
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    params, opt_state, update_metrics = _update(optimizer, schedule, state, grads)
    out = {"loss": loss, "bits_per_dim": metrics.bits_per_dim(loss), **update_metrics}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

  in_shardings = (state_shardings, batch_sharding) + ((vqvae_shardings,) if vqvae is not None else ())
  return jax.jit(step, in_shardings=in_shardings, out_shardings=(state_shardings, None),
                 donate_argnums=(0,) if donate else ())


# ---------------------------------------------------------------------------------------------------------------
# Initial states.
# ---------------------------------------------------------------------------------------------------------------
def video_shape(config: Any) -> tuple[int, int, int, int]:
  """`(T, H, W, 3)` of the clips of `config.data`."""
  return (int(config.data.seq_len), int(config.data.resolution), int(config.data.resolution), 3)


def vqvae_init_fn(model: vqvae_lib.VQVAE, video_shape: tuple[int, ...], optimizer: optax.GradientTransformation):
  """`rng -> TrainState`, parameters boxed with their logical axis names (for `common.abstract_state`)."""
  model.latent_shape(video_shape)  # Fails early, naming the shapes, if the clip does not downsample.

  def init(rng):
    params_rng, codebook_rng = jax.random.split(rng)
    variables = model.init({"params": params_rng, "codebook": codebook_rng},
                           jnp.zeros((1, *video_shape), jnp.float32), train=False)
    params = variables["params"]
    return common.TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=optimizer.init(params),
                             model_state={k: variables[k] for k in VQVAE_MUTABLE if k in variables})

  return init


def gpt_example_batch(model: gpt_lib.GPT, batch: int, sharding_: Any = None) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract train batch of the prior: `codes`, plus `cond_frames` / `label` when it is conditioned on them."""
  out = {"codes": jax.ShapeDtypeStruct((batch, *model.shape), jnp.int32, sharding=sharding_)}
  if model.n_cond_frames:
    out["cond_frames"] = jax.ShapeDtypeStruct((batch, model.n_cond_frames, *model.frame_shape, 3), jnp.float32,
                                              sharding=sharding_)
  if model.class_cond_dim:
    out["label"] = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding_)
  return out


def gpt_init_fn(model: gpt_lib.GPT, optimizer: optax.GradientTransformation):
  """`rng -> TrainState`; `model_state["codebook"]` is a random placeholder until the VQ-VAE's is put in."""

  def init(rng):
    example = {k: jnp.zeros(v.shape, v.dtype) for k, v in gpt_example_batch(model, 1).items()}
    variables = model.init({"params": rng}, example["codes"], model.cond_from_batch(example), deterministic=True)
    params = variables["params"]
    return common.TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=optimizer.init(params),
                             model_state={"codebook": variables["codebook"]})

  return init


def derive_gpt_config(config: ml_collections.ConfigDict, vqvae_config: Any, num_classes: int | None
                      ) -> ml_collections.ConfigDict:
  """A copy of the prior's `config` with `derived` filled in from its VQ-VAE's config (a checkpoint's, or a config
  file's for a compile-only run): what `gpt_from_config` needs besides `config.model`."""
  out = ml_collections.ConfigDict(config.to_dict())
  res = int(config.data.resolution)
  if int(vqvae_config.data.resolution) != res:
    raise ValueError(f"config.data.resolution={res} differs from the VQ-VAE's {vqvae_config.data.resolution}")
  class_cond = bool(config.model.get("class_cond", False))
  if class_cond and not num_classes:
    raise ValueError(f"config.model.class_cond=True but dataset {config.data.name!r} has no labels")
  vqvae = vqvae_lib.vqvae_from_config(vqvae_config)
  out.derived = ml_collections.ConfigDict(dict(
      shape=tuple(vqvae.latent_shape((int(config.data.seq_len), res, res))),
      n_codes=int(vqvae_config.model.n_codes), embedding_dim=int(vqvae_config.model.embedding_dim),
      frame_shape=(res, res), class_cond_dim=int(num_classes) if class_cond else 0))
  return out


# ---------------------------------------------------------------------------------------------------------------
# Programs.
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """What a config and a mesh compile to; nothing is allocated until `init` is called.

  Attributes:
    config: the config with `platform` resolved (and, for the prior, `derived`): what a checkpoint records.
    model, optimizer, schedule: as the steps use them.
    init: jitted `rng -> TrainState`, laid out in `state_shardings`.
    train_step: from `make_*_train_step` (evaluation runs `config.evals` through `evaluation.suite`).
    state_shardings: `TrainState` of `NamedSharding`s.
    abstract_state: `TrainState` of `jax.ShapeDtypeStruct`s carrying those shardings (the target of a restore, the
      state argument of `train_step.lower`).
    batch_sharding: sharding of every batch leaf.
    abstract_batch: one global train batch as sharded `jax.ShapeDtypeStruct`s.
    init_rng: the key `init` is called with in training.
  """
  config: ml_collections.ConfigDict
  model: nn.Module
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  init: Callable
  train_step: Callable
  state_shardings: Any
  abstract_state: Any
  batch_sharding: Any
  abstract_batch: dict[str, jax.ShapeDtypeStruct]
  init_rng: jax.Array


def _program(config, mesh, model, init_fn, optimizer, make_train_step, abstract_batch, init_rng) -> TrainProgram:
  state_shardings, abstract = common.abstract_state(init_fn, mesh)
  init = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=state_shardings)
  batch_sharding = sharding.batch_sharding(mesh)
  train_step = make_train_step(state_shardings, batch_sharding)
  return TrainProgram(config=config, model=model, optimizer=optimizer, schedule=common.learning_rate_schedule(config),
                      init=init, train_step=train_step, state_shardings=state_shardings,
                      abstract_state=abstract, batch_sharding=batch_sharding,
                      abstract_batch=abstract_batch(batch_sharding), init_rng=init_rng)


def vqvae_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> TrainProgram:
  """The VQ-VAE's training program for `config` on `mesh` (keys from `config.seed`, as the trainer uses them)."""
  config = common.resolve_platform(config, mesh)
  sharding.batch_size_per_process(int(config.batch_size), mesh)
  model = vqvae_lib.vqvae_from_config(config)
  optimizer, schedule = common.make_optimizer(config), common.learning_rate_schedule(config)
  init_rng, step_rng = jax.random.split(jax.random.key(int(config.seed)))
  shape = video_shape(config)

  def make_train_step(state_shardings, batch_sharding):
    kw = dict(state_shardings=state_shardings, batch_sharding=batch_sharding)
    return make_vqvae_train_step(model, optimizer, schedule, rng=step_rng,
                                 compute_dtype=jnp.dtype(config.get("compute_dtype", "float32")), **kw)

  batch = lambda s: {"video": jax.ShapeDtypeStruct((int(config.batch_size), *shape), jnp.float32, sharding=s)}
  return _program(config, mesh, model, vqvae_init_fn(model, shape, optimizer), optimizer, make_train_step, batch,
                  init_rng)


def gpt_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
                vqvae: vqvae_lib.VQVAE | None = None, vqvae_shardings: Any = None) -> TrainProgram:
  """The prior's training program for a `config` that has `derived` (`derive_gpt_config`).

  Without `vqvae` the steps take batches of `codes` (what `abstract_batch` describes; the VQ-VAE's codebook is the
  state leaf `model_state["codebook"]["embeddings"]`); with it they also take the VQ-VAE's variables and encode
  batches of `video` on the fly.
  """
  if "derived" not in config:
    raise ValueError("the prior's config needs `derived` (steps.derive_gpt_config with its VQ-VAE's config)")
  config = common.resolve_platform(config, mesh)
  sharding.batch_size_per_process(int(config.batch_size), mesh)
  model = gpt_lib.gpt_from_config(config)
  optimizer, schedule = common.make_optimizer(config), common.learning_rate_schedule(config)
  init_rng, step_rng, _ = jax.random.split(jax.random.key(int(config.seed)), 3)

  def make_train_step(state_shardings, batch_sharding):
    kw = dict(state_shardings=state_shardings, batch_sharding=batch_sharding, vqvae=vqvae,
              vqvae_shardings=vqvae_shardings)
    return make_gpt_train_step(model, optimizer, schedule, rng=step_rng, **kw)

  batch = lambda s: gpt_example_batch(model, int(config.batch_size), s)
  return _program(config, mesh, model, gpt_init_fn(model, optimizer), optimizer, make_train_step, batch, init_rng)
