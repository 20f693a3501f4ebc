"""`train/steps.py`: the trainers' steps apply exactly the exported losses' gradients, report `finite`, donate the
state, and a program goes from config + mesh to a lowered step without data or a checkpoint."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from experiments.configs import gpt_bair, gpt_moving_mnist, vqvae_moving_mnist
from tests.train.synthetic import clips
from videogpt_jax import sharding
from videogpt_jax.train import steps


def _mesh():
  return sharding.make_mesh(ml_collections.ConfigDict({"mesh": (1, 1, 1), "num_devices": 1}))


def _sgd_step(make, program, **kwargs):
  """The program's step rebuilt with plain SGD (lr 1): new params = params - the step's gradient."""
  sgd = optax.sgd(1.0)
  return make(program.model, sgd, optax.constant_schedule(1.0), state_shardings=None, batch_sharding=None,
              rng=jax.random.key(5), donate=False, **kwargs), sgd


def test_vqvae_step_applies_the_gradient_of_vqvae_loss_and_reports_finite():
  config = vqvae_moving_mnist.get_config("runlocal")
  config.batch_size = 2
  program = steps.vqvae_program(config, _mesh())
  state = program.init(program.init_rng)
  step, sgd = _sgd_step(steps.make_vqvae_train_step, program)
  state = state.replace(opt_state=sgd.init(state.params))
  video = jnp.asarray(clips(0, 0, 2, 4, 16))
  new, metrics = step(state, {"video": video})
  rng = jax.random.fold_in(jax.random.key(5), 0)
  (loss, (aux, model_state)), grads = jax.value_and_grad(steps.vqvae_loss, argnums=1, has_aux=True)(
      program.model, state.params, state.model_state, video, rng)
  want = jax.tree.map(lambda p, g: p - g, state.params, grads)
  for got, exp in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)
  assert bool(metrics["finite"]) and int(new.step) == 1
  # The EMA codebook and BatchNorm statistics come from the same forward pass.
  for got, exp in zip(jax.tree.leaves(new.model_state), jax.tree.leaves(model_state)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=1e-5, atol=1e-6)
  # A NaN clip poisons the parameters: `finite` says so.
  _, bad = step(state, {"video": video * jnp.nan})
  assert not bool(bad["finite"])


def test_program_step_donates_the_state_and_keeps_its_shardings():
  config = vqvae_moving_mnist.get_config("runlocal")
  config.batch_size = 2
  program = steps.vqvae_program(config, _mesh())
  state = program.init(program.init_rng)
  old = jax.tree.leaves(state.params)[0]
  new, metrics = program.train_step(state, {"video": jnp.asarray(clips(0, 0, 2, 4, 16))})
  assert old.is_deleted()
  assert jax.tree.map(lambda x: x.sharding, new) == program.state_shardings
  assert set(metrics) == {"loss", "recon_loss", "commitment_loss", "perplexity", "grad_norm", "lr", "finite"}
  assert metrics["finite"].dtype == jnp.bool_ and metrics["finite"].shape == ()


def _prior_config(module=gpt_moving_mnist, arg="runlocal"):
  return steps.derive_gpt_config(module.get_config(arg), vqvae_moving_mnist.get_config("runlocal"), None)


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan_remat"])
def test_gpt_step_applies_the_gradient_of_gpt_loss(scan):
  config = _prior_config()
  config.batch_size = 2
  config.model.update(scan_layers=scan, remat=scan)
  program = steps.gpt_program(config, _mesh())
  state = program.init(program.init_rng)
  assert ("blocks" in state.params) == scan and ("blocks_0" in state.params) != scan
  step, sgd = _sgd_step(steps.make_gpt_train_step, program)
  state = state.replace(opt_state=sgd.init(state.params))
  codes = jax.random.randint(jax.random.key(2), (2, *program.model.shape), 0, program.model.n_codes)
  new, metrics = step(state, {"codes": codes})
  rng = jax.random.fold_in(jax.random.key(5), 0)
  loss, grads = jax.value_and_grad(steps.gpt_loss, argnums=1)(program.model, state.params, state.model_state,
                                                             {"codes": codes}, rng)
  for got, p, g in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), jax.tree.leaves(grads)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(p - g), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["bits_per_dim"]), float(loss) / np.log(2), rtol=1e-6)
  assert bool(metrics["finite"])


def test_a_prior_program_lowers_from_the_config_alone():
  """What the ahead-of-time compile tool does: no data, no VQ-VAE checkpoint, nothing allocated but keys."""
  config = _prior_config(gpt_bair)  # frame-conditional
  before = {id(x) for x in jax.live_arrays()}
  program = steps.gpt_program(config, _mesh())
  lowered = program.train_step.lower(program.abstract_state, program.abstract_batch)
  created = [x for x in jax.live_arrays() if id(x) not in before]
  assert all(x.nbytes <= 16 for x in created), [(x.shape, x.dtype) for x in created]
  assert set(program.abstract_batch) == {"codes", "cond_frames"}
  assert program.abstract_batch["codes"].shape == (config.batch_size, 2, 4, 4)
  assert program.abstract_state.model_state["codebook"]["embeddings"].shape == (32, 8)
  assert program.config.platform == "cpu" and "derived" in program.config
  assert "stablehlo" in lowered.as_text()[:2000] or "func.func" in lowered.as_text()[:4000]


def test_bad_platform_and_missing_derived_are_clear_errors():
  config = vqvae_moving_mnist.get_config("runlocal")
  config.platform = "quantum"
  with pytest.raises(ValueError, match="config.platform .* must be one of"):
    steps.vqvae_program(config, _mesh())
  with pytest.raises(ValueError, match="derive_gpt_config"):
    steps.gpt_program(gpt_moving_mnist.get_config("runlocal"), _mesh())


def test_the_configured_platform_reaches_the_modules_and_the_checkpointed_config():
  config = vqvae_moving_mnist.get_config("runlocal")
  assert config.platform == ""
  assert steps.vqvae_program(config, _mesh()).model.platform == "cpu"  # the mesh's devices
  config.platform = "tpu"  # lowered here, on a CPU host, for a TPU
  program = steps.vqvae_program(config, _mesh())
  assert program.model.platform == "tpu" and program.config.platform == "tpu"
  prior = _prior_config(gpt_bair)
  prior.platform = "tpu"
  assert steps.gpt_program(prior, _mesh()).model.platform == "tpu"
