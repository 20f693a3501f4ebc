"""Every `(data, fsdp, model)` mesh computes the same gradients and training steps as one device.

For the VQ-VAE and the three priors (unconditional, frame-conditional, class-conditional), two steps of the
trained loss, its gradient and Adam run as one jitted `lax.scan` on a mesh of the 8 simulated devices and on one
device. Two things are compared:
  - the gradients of every step, computed on the mesh at the one-device run's parameters (the state before that
    step), to float rounding: this is what a partitioning fault (wrong convolution gradients) changes;
  - the losses of the mesh's own two training steps, to float rounding: the mesh's own Adam updates and state.
The mesh's own second-step gradients are not compared: Adam's first update is `lr * g / (|g| + eps)`, so an entry
whose gradient is at rounding level (the frame encoder's, measured ~1e-11) moves by up to `lr` with the sign of
its rounding, and the next gradient of the frame-conditional prior's ResNet moves by ~5e-3 relative from that
alone (measured on one device at the two runs' step-1 parameters). The full matrix is slow; the default suite
keeps (2, 2, 2), the mesh where XLA's partitioner once got convolution gradients wrong.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
import pytest

from experiments.configs import gpt_bair, gpt_moving_mnist, gpt_ucf101, vqvae_moving_mnist
from tests.train.synthetic import SyntheticIterator, clips
from tests.train.test_gpt_trainer import tiny_config as tiny_prior_config
from tests.train.test_vqvae_trainer import tiny_config as tiny_vqvae_config
from videogpt_jax import sharding
from videogpt_jax.models import gpt as gpt_lib
from videogpt_jax.models import vqvae as vqvae_lib
from videogpt_jax.train import common, gpt_trainer, steps, vqvae_trainer

BATCH = 8
STEPS = 2
NUM_CLASSES = 5
MESHES = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2), (4, 1, 2), (1, 4, 2), (2, 4, 1)]
KINDS = ["vqvae", "prior", "frame_prior", "class_prior"]
# Float32 sums in another order, at the same parameters. Errors are per leaf, max |error| / max |value|, the value
# floored at 1% of the largest gradient (biases in front of a BatchNorm have a zero gradient up to rounding).
# Measured: at most 3e-5 on every mesh. The fault this guards against gave 0.3-0.6.
GRAD_RTOL = 1e-4
LOSS_RTOL = 1e-5


def _vqvae_setup():
  config = vqvae_moving_mnist.get_config("runlocal")
  config.batch_size = BATCH
  model = vqvae_lib.vqvae_from_config(config)
  tx = common.make_optimizer(config)
  rng = jax.random.key(7)

  def loss_fn(params, model_state, batch, step):
    (_, aux), new_state = model.apply({"params": params, **model_state}, batch["video"], train=True,
                                      mutable=["batch_stats", "codebook"],
                                      rngs={"codebook": jax.random.fold_in(rng, step)})
    return aux["loss"], new_state

  batches = [{"video": clips(0, i, BATCH, 4, 16)} for i in range(STEPS)]
  return steps.vqvae_init_fn(model, steps.video_shape(config), tx), loss_fn, tx, batches


def _prior_setup(kind):
  module, arg = {"prior": (gpt_moving_mnist, "runlocal"), "frame_prior": (gpt_bair, "runlocal"),
                 "class_prior": (gpt_ucf101, "classcond,runlocal")}[kind]
  config = module.get_config(arg)
  # A small frame encoder (same layers and layouts as the ResNet-34, fewer of them): compile time.
  config.model.cond_width, config.model.cond_blocks = 8, (1, 1, 1, 1)
  config.batch_size = BATCH
  config.derived = ml_collections.ConfigDict(dict(
      shape=(2, 4, 4), n_codes=32, embedding_dim=8, frame_shape=(16, 16),
      class_cond_dim=NUM_CLASSES if kind == "class_prior" else 0))
  model = gpt_lib.gpt_from_config(config)
  tx = common.make_optimizer(config)
  rng = jax.random.key(7)
  init = steps.gpt_init_fn(model, tx)

  def perturbed_init(r):
    # fc_out starts at zero, which zeroes every other gradient: start from a random point instead.
    state = init(r)
    leaves, treedef = jax.tree.flatten(state.params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    keys = jax.random.split(jax.random.key(3), len(leaves))
    noisy = [p.replace_boxed(p.unbox() + 0.05 * jax.random.normal(k, p.unbox().shape))
             if isinstance(p, nn.Partitioned) else p + 0.05 * jax.random.normal(k, p.shape)
             for p, k in zip(leaves, keys)]
    return state.replace(params=treedef.unflatten(noisy))  # Adam's initial state does not depend on them.

  def loss_fn(params, model_state, batch, step):
    logits = model.apply({"params": params, **model_state}, batch["codes"], model.cond_from_batch(batch),
                         deterministic=False, rngs={"dropout": jax.random.fold_in(rng, step)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["codes"]).mean(), model_state

  data = np.random.default_rng(0)
  batches = []
  for i in range(STEPS):
    batch = {"codes": data.integers(0, 32, (BATCH, 2, 4, 4)).astype(np.int32)}
    if kind == "frame_prior":
      batch["cond_frames"] = clips(1, i, BATCH, 1, 16)
    if kind == "class_prior":
      batch["label"] = data.integers(0, NUM_CLASSES, (BATCH,)).astype(np.int32)
    batches.append(batch)
  return perturbed_init, loss_fn, tx, batches


@functools.cache
def _setup(kind):
  return _vqvae_setup() if kind == "vqvae" else _prior_setup(kind)


def _mesh(mesh_shape):
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  return sharding.make_mesh(ml_collections.ConfigDict(dict(mesh=mesh_shape)), devices)


def _stacked_batches(kind, mesh):
  """The STEPS batches stacked `(STEPS, B, ...)`, the batch axis (the second one) split over the mesh."""
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *_setup(kind)[3])
  spec = jax.sharding.PartitionSpec(None, sharding.BATCH_AXES)
  return jax.device_put(stacked, jax.sharding.NamedSharding(mesh, spec))


def _value_and_grad(kind, mesh, state, batch):
  loss_fn = _setup(kind)[1]
  batch = jax.lax.with_sharding_constraint(batch, sharding.batch_sharding(mesh))
  return jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.model_state, batch, state.step)


def run_steps(kind, mesh_shape):
  """`(losses (STEPS,), gradients (STEPS, ...), states (STEPS, ...))` of STEPS training steps on `mesh_shape`;
  `states[i]` is the state before step i, on the host."""
  init, _, tx, _ = _setup(kind)
  mesh = _mesh(mesh_shape)
  shardings, _ = common.abstract_state(init, mesh)
  state = jax.device_put(initial_state(kind), shardings)

  def train(state, stacked):
    def step(state, batch):
      (loss, model_state), grads = _value_and_grad(kind, mesh, state, batch)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, model_state=model_state)
      return new, (loss, grads, state)
    _, out = jax.lax.scan(step, state, stacked)
    return out

  with jax.set_mesh(mesh):
    out = jax.jit(train, in_shardings=(shardings, None))(state, _stacked_batches(kind, mesh))
  return jax.tree.map(np.asarray, out)


def grads_at(kind, mesh_shape, states):
  """The gradients of every step on `mesh_shape` at the given states `(STEPS, ...)` (host arrays)."""
  init = _setup(kind)[0]
  mesh = _mesh(mesh_shape)
  shardings, _ = common.abstract_state(init, mesh)
  stacked_shardings = jax.tree.map(
      lambda s: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, *s.spec)), shardings)

  def grads(states, stacked):
    return jax.lax.map(lambda sb: _value_and_grad(kind, mesh, *sb)[1], (states, stacked))

  with jax.set_mesh(mesh):
    out = jax.jit(grads, in_shardings=(stacked_shardings, None))(jax.device_put(states, stacked_shardings),
                                                                 _stacked_batches(kind, mesh))
  return jax.tree.map(np.asarray, out)


@functools.cache
def initial_state(kind):
  """The unsharded initial state (one compile per model; each mesh gets a copy put onto its shardings)."""
  return jax.jit(lambda r: nn.meta.unbox(_setup(kind)[0](r)))(jax.random.key(0))


@functools.cache
def cached_run_steps(kind, mesh_shape):
  return run_steps(kind, mesh_shape)


def reference(kind):
  return cached_run_steps(kind, (1, 1, 1))


def grad_errors(got, want):
  """Per-leaf max |error| / max |want| of gradients stacked over steps, as `{path: (STEPS,) errors}`."""
  scale = np.max([np.abs(w).reshape(STEPS, -1).max(axis=1) for w in jax.tree.leaves(want)], axis=0)

  def one(g, w):
    axes = tuple(range(1, g.ndim))
    return np.abs(g - w).max(axis=axes) / np.maximum(np.abs(w).max(axis=axes), 0.01 * scale)
  errs = jax.tree.map(one, got, want)
  return {jax.tree_util.keystr(p): e for p, e in jax.tree_util.tree_leaves_with_path(errs)}


def check_mesh(kind, mesh_shape):
  want_losses, want_grads, want_states = reference(kind)
  losses = cached_run_steps(kind, mesh_shape)[0]
  errs = grad_errors(grads_at(kind, mesh_shape, want_states), want_grads)
  worst = sorted(errs.items(), key=lambda kv: -kv[1].max())[:5]
  print(f"{kind} on {mesh_shape}: gradient error max {worst[0][1].max():.1e} ({worst[0][0]}), median "
        f"{np.median(np.concatenate(list(errs.values()))):.1e}")
  assert all((e < GRAD_RTOL).all() for e in errs.values()), f"{kind} on {mesh_shape}: worst gradients {worst}"
  np.testing.assert_allclose(losses, want_losses, rtol=LOSS_RTOL, err_msg=f"{kind} on {mesh_shape}")


@pytest.mark.parametrize("kind", ["vqvae", "frame_prior"])
def test_data_fsdp_model_mesh_matches_one_device(kind):
  check_mesh(kind, (2, 2, 2))


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", KINDS)
def test_every_mesh_matches_one_device(kind, mesh_shape):
  check_mesh(kind, mesh_shape)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vqvae", "frame_prior"])
def test_same_mesh_twice_is_bit_identical(kind):
  """Two compilations of the same program on the same mesh give the same bits."""
  first, second = cached_run_steps(kind, (2, 2, 2)), run_steps(kind, (2, 2, 2))
  np.testing.assert_array_equal(first[0], second[0])
  for a, b in zip(jax.tree.leaves(first[1:]), jax.tree.leaves(second[1:])):
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def vqvae_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vqvae")
  config = tiny_vqvae_config(total_steps=2, checkpoint_every=2)
  vqvae_trainer.train_and_evaluate(config, workdir, train_iter=SyntheticIterator(config))
  return workdir


@pytest.mark.slow
def test_prior_trainer_on_eight_devices_matches_one(vqvae_workdir, tmp_path):
  """The frame-conditional prior's trainer (codes encoded in the step) on (2, 2, 2) and on one device."""
  curves = []
  for mesh, n in (((1, 1, 1), 1), ((2, 2, 2), 8)):
    config = tiny_prior_config(vqvae_workdir, gpt_bair, "runlocal", mesh=mesh, num_devices=n, total_steps=4,
                               checkpoint_every=4, log_every=1)
    config.model.cond_width, config.model.cond_blocks = 8, (1, 1, 1, 1)
    result = gpt_trainer.train_and_evaluate(config, tmp_path / str(n),
                                            train_iter=SyntheticIterator(config, n_cond_frames=1))
    curves.append([(m["loss"], m["grad_norm"]) for _, m in result.history])
  np.testing.assert_allclose(curves[1], curves[0], rtol=1e-4)
