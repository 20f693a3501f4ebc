"""Mesh construction, logical-axis rules and the shardings they give to an abstract state."""
from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from videogpt_jax import sharding


def _config(mesh, num_devices=-1):
  return ml_collections.ConfigDict({"mesh": mesh, "num_devices": num_devices})


class _Boxed(nn.Module):
  """A stand-in with logically named parameters of awkward sizes."""

  @nn.compact
  def __call__(self, x):
    part = nn.with_logical_partitioning
    k = self.param("kernel", part(nn.initializers.normal(), ("conv_k", "conv_in", "conv_out")), (3, 4, 8))
    w = self.param("square", part(nn.initializers.normal(), ("embed", "embed")), (8, 8))
    v = self.param("vocab", part(nn.initializers.normal(), ("embed", "vocab")), (8, 6))
    b = self.param("bias", nn.initializers.zeros, (8,))
    return (x @ w + b) @ v + k.sum()


def test_mesh_shape_resolves_minus_one_and_rejects_bad_shapes():
  assert sharding.mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert sharding.mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="needs 4 devices"):
    sharding.mesh_shape((2, 2, 1), 8)
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.mesh_shape((-1, -1, 1), 8)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.mesh_shape((-1, 3, 1), 8)


def test_make_mesh_axes_and_sub_mesh():
  mesh = sharding.make_mesh(_config((2, 2, 2)))
  assert mesh.axis_names == ("data", "fsdp", "model")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "model": 2}
  sub = sharding.make_mesh(_config((-1, 1, 1), num_devices=1))
  assert sub.devices.size == 1
  with pytest.raises(ValueError, match="num_devices=16"):
    sharding.make_mesh(_config((-1, 1, 1), num_devices=16))


def test_logical_rules_are_first_unused_axis_and_repeats_replicate():
  # `batch` already uses fsdp, so `embed` must not take it again.
  assert sharding.logical_to_mesh_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
  assert sharding.logical_to_mesh_spec(("embed", "embed")) == P("fsdp", None)
  assert sharding.logical_to_mesh_spec(("embed", "mlp")) == P("fsdp", "model")
  assert sharding.logical_to_mesh_spec(("conv_k", "conv_k", "conv_k", "conv_in", "conv_out")) == \
      P(None, None, None, None, ("model", "fsdp"))
  assert sharding.logical_to_mesh_spec(("codebook", "norm")) == P(None, None)
  assert sharding.logical_to_mesh_spec(None) == P()
  # Scanned layers keep their stacked axis whole; the residual stream is batch-split with whole channels.
  assert sharding.logical_to_mesh_spec(("layers", "embed", "mlp")) == P(None, "fsdp", "model")
  assert sharding.logical_to_mesh_spec(("batch", "length", "act_embed")) == P(("data", "fsdp"), None, None)
  names = {name for name, _ in sharding.LOGICAL_AXIS_RULES}
  assert names == {"batch", "length", "embed", "mlp", "heads", "kv", "vocab", "codebook", "conv_in", "conv_out",
                   "conv_k", "norm", "layers", "act_embed"}


def test_state_shardings_follow_names_and_drop_non_dividing_axes():
  mesh = sharding.make_mesh(_config((2, 2, 2)))
  model = _Boxed()
  init = lambda rng: model.init(rng, jnp.ones((2, 8)))
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.logical_to_shardings(abstract, mesh)
  specs = jax.tree.map(lambda s: s.spec, shardings["params"])
  assert specs["kernel"] == P(None, None, ("model", "fsdp"))
  assert specs["square"] == P("fsdp")
  assert specs["vocab"] == P("fsdp", "model")
  assert specs["bias"] == P()
  # A dimension the mesh axis does not divide is replicated instead of failing.
  odd = sharding.make_mesh(_config((1, 1, 4), num_devices=4))
  odd_specs = jax.tree.map(lambda s: s.spec, sharding.logical_to_shardings(abstract, odd)["params"])
  assert odd_specs["vocab"] == P("fsdp")  # 6 % 4 != 0: `model` dropped, size-1 `fsdp` kept
  assert odd_specs["kernel"] == P(None, None, ("model", "fsdp"))
  # Sharded init lands each array in its sharding, with the values of an unsharded init (up to fusion rounding).
  state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(jax.random.key(0))
  ref = jax.jit(lambda r: nn.meta.unbox(init(r)))(jax.random.key(0))
  for got, want, s in zip(jax.tree.leaves(state), jax.tree.leaves(ref), jax.tree.leaves(shardings)):
    assert got.sharding.is_equivalent_to(s, got.ndim)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-8)


def test_batch_sharding_splits_the_leading_axis():
  mesh = sharding.make_mesh(_config((2, 2, 2)))
  x = np.arange(8 * 3 * 2, dtype=np.float32).reshape(8, 3, 2)
  video = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), x)
  assert video.sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in video.addressable_shards} == {(2, 3, 2)}
  np.testing.assert_array_equal(np.asarray(video), x)
  with pytest.raises(ValueError, match="divisible"):
    sharding.batch_size_per_process(6, mesh)
  assert sharding.batch_size_per_process(8, mesh) == 8


class _Misspelled(nn.Module):
  @nn.compact
  def __call__(self, x):
    w = self.param("w_qs", nn.with_logical_partitioning(nn.initializers.normal(), ("embed", "head")), (8, 8))
    return x @ w


def test_unknown_logical_name_is_an_error_naming_the_parameter():
  with pytest.raises(ValueError, match=r"an array: logical axis name\(s\) \['hiddens'\] have no rule"):
    sharding.logical_to_mesh_spec(("embed", "hiddens"))
  mesh = sharding.make_mesh(_config((2, 2, 2)))
  abstract = jax.eval_shape(lambda r: _Misspelled().init(r, jnp.ones((2, 8))), jax.random.key(0))
  with pytest.raises(ValueError, match=r"params/w_qs: logical axis name\(s\) \['head'\]"):
    sharding.logical_to_shardings(abstract, mesh)


def test_non_dividing_axes_are_logged_once_by_parameter(caplog):
  abstract = jax.eval_shape(lambda r: _Boxed().init(r, jnp.ones((2, 8))), jax.random.key(0))
  with caplog.at_level(logging.WARNING):
    sharding.logical_to_shardings(abstract, sharding.make_mesh(_config((2, 2, 2))))
  assert not [r for r in caplog.records if "replicated" in r.getMessage()]  # everything divides
  with caplog.at_level(logging.WARNING):
    sharding.logical_to_shardings(abstract, sharding.make_mesh(_config((1, 1, 4), num_devices=4)))
  warnings = [r.getMessage() for r in caplog.records if "replicated" in r.getMessage()]
  assert len(warnings) == 1
  assert "params/vocab (8, 6) dim 1 (6): model=4" in warnings[0]
  assert "kernel" not in warnings[0] and "square" not in warnings[0]  # 8 % 4 == 0


def test_per_device_bytes_counts_shards():
  mesh = sharding.make_mesh(_config((1, 8, 1)))
  x = jax.device_put(jnp.zeros((8, 4), jnp.float32), sharding.batch_sharding(mesh))
  per = sharding.per_device_bytes({"x": x})
  assert len(per) == 8 and set(per.values()) == {4 * 4}
