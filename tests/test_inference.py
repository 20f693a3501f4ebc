"""`videogpt_jax.inference`: restores only parameters and model state, from new and old checkpoint layouts."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from experiments.configs import gpt_moving_mnist, vqvae_moving_mnist
from videogpt_jax import checkpointing, inference, sharding
from videogpt_jax.train import common, steps


def _mesh():
  return sharding.make_mesh(ml_collections.ConfigDict({"mesh": (1, 1, 1), "num_devices": 1}))


def _saved_prior(workdir):
  """A step-0 prior checkpoint (config and state as the trainer writes them) and its state."""
  vq_config = vqvae_moving_mnist.get_config("runlocal")
  config = steps.derive_gpt_config(gpt_moving_mnist.get_config("runlocal"), vq_config, None)
  program = steps.gpt_program(config, _mesh())
  state = program.init(jax.random.key(0))
  checkpointer = common.make_checkpointer(program.config, workdir)
  checkpointer.save(0, state, config=program.config)
  checkpointer.close()
  return state


def test_loading_a_prior_builds_no_optimizer_and_reads_no_optimizer_state(tmp_path, monkeypatch):
  state = _saved_prior(tmp_path)
  assert jax.tree.leaves(state.opt_state)  # There is optimizer state on disk to (not) read.
  read = []
  original = ocp.CheckpointManager.restore

  def spy(self, step, args=None, **kwargs):
    read.extend(args.keys())
    return original(self, step, args=args, **kwargs)

  def no_optimizer(*args, **kwargs):
    raise AssertionError("inference built an optimizer")

  monkeypatch.setattr(ocp.CheckpointManager, "restore", spy)
  monkeypatch.setattr(optax, "adam", no_optimizer)
  monkeypatch.setattr(common, "make_optimizer", no_optimizer)
  gpt, variables, config = inference.load_gpt(tmp_path)
  assert "training" not in read and "state" not in read and {"params", "model_state"} <= set(read)
  # The restored tree is the model's variables and nothing else.
  assert set(variables) == {"params", "codebook"}
  assert jax.tree.structure(variables["params"]) == jax.tree.structure(state.params)
  n_restored = len(jax.tree.leaves(variables))
  assert n_restored == len(jax.tree.leaves(state.params)) + 1 < len(jax.tree.leaves(state))
  for got, want in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert config.derived.n_codes == gpt.n_codes == 32
  assert config.platform == "cpu"


def _old_layout_vqvae(workdir):
  """A VQ-VAE checkpoint written as train states were before: one `state` item holding the whole train state."""
  config = vqvae_moving_mnist.get_config("runlocal")
  program = steps.vqvae_program(config, _mesh())
  state = program.init(jax.random.key(1))
  manager = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(
      enable_async_checkpointing=False), item_handlers={
          "state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
          "data": ocp.JsonCheckpointHandler()})
  config_json = dict(config.to_dict())
  config_json.pop("platform")  # Configs of that time had no platform field.
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(config_json),
                                          data=ocp.args.JsonSave({"step": 3})))
  manager.wait_until_finished()
  manager.close()
  return program, state


def test_an_old_single_item_workdir_still_loads_and_resumes(tmp_path):
  program, state = _old_layout_vqvae(tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "3").iterdir() if p.is_dir()) == [
      "config", "data", "state"]
  module, variables, config = inference.load_vqvae(tmp_path)
  assert set(variables) == {"params", "batch_stats", "codebook"}
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves({"params": state.params, **state.model_state})):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert module.n_codes == config.model.n_codes
  # A trainer resuming such a run reads the whole train state, optimizer state included.
  restored = checkpointing.Checkpointer(tmp_path / "checkpoints", read_only=True).restore(program.abstract_state)
  assert restored.step == 3 and restored.data_state == {"step": 3}
  for got, want in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_mismatched_model_is_one_clear_error_in_both_layouts(tmp_path):
  _old_layout_vqvae(tmp_path / "old")
  state = _saved_prior(tmp_path / "new")
  del state
  checkpointer = checkpointing.Checkpointer(tmp_path / "old" / "checkpoints", read_only=True)
  wrong = {"conv": jax.ShapeDtypeStruct((3,), np.float32, sharding=sharding.replicated(_mesh()))}
  with pytest.raises(checkpointing.CheckpointError, match="params.conv missing from the checkpoint"):
    checkpointer.restore_variables(wrong, {})
  checkpointer = checkpointing.Checkpointer(tmp_path / "new" / "checkpoints", read_only=True)
  with pytest.raises(checkpointing.CheckpointError, match="incompatible with this model/config"):
    checkpointer.restore_variables(wrong, {})
