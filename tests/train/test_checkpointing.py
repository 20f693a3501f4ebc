"""Orbax checkpoints: round trip with config and data state, retention, other-mesh restore, clear errors."""
from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from videogpt_jax import checkpointing, sharding
from videogpt_jax.train import common


def _state(mesh, spec, scale=1.0):
  """A small train state whose `w` (8, 4) is laid out by `spec` on `mesh`."""
  w = jnp.arange(32, dtype=jnp.float32).reshape(8, 4) * scale
  params = {"w": w, "b": jnp.full((4,), scale)}
  opt = optax.adam(1e-3).init(params)
  state = common.TrainState(step=jnp.array(7, jnp.int32), params=params, opt_state=opt,
                            model_state={"stats": jnp.ones((3,)) * scale})
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, spec if x.ndim == 2 else P()))
  return jax.tree.map(shard, state)


def _mesh(shape, n):
  return sharding.make_mesh(ml_collections.ConfigDict({"mesh": shape}), devices=jax.devices()[:n])


def _files(directory: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_round_trip_with_config_and_data_state(tmp_path):
  mesh = _mesh((-1, 1, 1), 8)
  state = _state(mesh, P())
  config = ml_collections.ConfigDict({"lr": 1e-3, "model": {"n_codes": 16}})
  ckpt = checkpointing.Checkpointer(tmp_path / "ckpt")
  assert ckpt.latest_step() is None
  assert ckpt.save(7, state, config=config, data_state={"batches": 7, "seed": 3})
  ckpt.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = checkpointing.Checkpointer(tmp_path / "ckpt").restore(abstract)
  assert restored.step == 7
  assert restored.config == {"lr": 1e-3, "model": {"n_codes": 16}}
  assert restored.data_state == {"batches": 7, "seed": 3}
  for got, want in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert isinstance(restored.state, common.TrainState)
  with pytest.raises(checkpointing.CheckpointError, match="step 99 not found"):
    ckpt.restore(abstract, step=99)
  with pytest.raises(checkpointing.CheckpointError, match="no checkpoint found"):
    checkpointing.Checkpointer(tmp_path / "empty").restore(abstract)


def test_restore_onto_a_different_mesh(tmp_path):
  """Saved on 8 devices as fsdp=8, restored on 4 devices as data=2 x model=2 (and onto 1 device)."""
  saved_mesh = _mesh((1, 8, 1), 8)
  state = _state(saved_mesh, P("fsdp", None))
  ckpt = checkpointing.Checkpointer(tmp_path)
  ckpt.save(7, state, config={}, data_state={})
  ckpt.wait()
  for shape, n, spec in (((2, 1, 2), 4, P(None, "model")), ((1, 1, 1), 1, P())):
    target_mesh = _mesh(shape, n)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
            target_mesh, spec if x.ndim == 2 else P())), state)
    restored = ckpt.restore(target).state
    w = restored.params["w"]
    assert w.sharding.mesh.devices.size == n and w.sharding.spec == spec
    np.testing.assert_array_equal(np.asarray(w), np.arange(32, dtype=np.float32).reshape(8, 4))
    np.testing.assert_array_equal(np.asarray(restored.opt_state[0].mu["w"]), np.zeros((8, 4)))


def test_keeps_last_n_and_the_best(tmp_path):
  mesh = _mesh((-1, 1, 1), 8)
  state = _state(mesh, P())
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=2, best_metric="loss", best_mode="min")
  for step, loss in ((1, 5.0), (2, 1.0), (3, 4.0), (4, 3.0), (5, 2.0)):
    ckpt.save(step, state, config={}, data_state={}, metrics={"loss": loss})
    ckpt.wait()
  assert sorted(ckpt.all_steps()) == [2, 4, 5]
  assert ckpt.best_step() == 2
  assert not ckpt.save(5, state, config={}, data_state={})  # an existing step is never overwritten


def test_incompatible_checkpoint_is_one_clear_error_and_left_untouched(tmp_path):
  mesh = _mesh((-1, 1, 1), 8)
  state = _state(mesh, P())
  ckpt = checkpointing.Checkpointer(tmp_path)
  ckpt.save(7, state, config={}, data_state={})
  ckpt.wait()
  before = _files(tmp_path)
  wrong = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  wrong = wrong.replace(params={"w": jax.ShapeDtypeStruct((8, 5), jnp.float32, sharding=state.params["w"].sharding),
                                "b": wrong.params["b"], "extra": wrong.params["b"]})
  with pytest.raises(checkpointing.CheckpointError) as err:
    checkpointing.Checkpointer(tmp_path).restore(wrong)
  message = str(err.value)
  assert "incompatible" in message and "params.w" in message and "(8, 4)" in message and "(8, 5)" in message
  assert "params.extra missing from the checkpoint" in message
  assert _files(tmp_path) == before


def test_corrupt_checkpoint_is_one_clear_error_and_left_untouched(tmp_path):
  mesh = _mesh((-1, 1, 1), 8)
  state = _state(mesh, P())
  ckpt = checkpointing.Checkpointer(tmp_path)
  ckpt.save(7, state, config={}, data_state={})
  ckpt.wait()
  # Damage every file of the array store (as a truncated copy or a disk error would).
  for path in (tmp_path / "7" / "params").rglob("*"):
    if path.is_file():
      path.write_bytes(b"\x00garbage")
  before = _files(tmp_path)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  with pytest.raises(checkpointing.CheckpointError, match=f"step 7 in {tmp_path}"):
    checkpointing.Checkpointer(tmp_path).restore(abstract)
  assert _files(tmp_path) == before
  assert os.listdir(tmp_path) == ["7"]
