"""The fused axial-attention Pallas kernel (`axial_kernel`) against the XLA path of `AxisAttention`, in the Pallas
interpreter (the CPU check of the TPU kernel's masks, head padding and custom VJP), with the same parameters.

Interpret mode costs about a second per call, so shapes stay at 256-2,048 tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fixtures import rel_err
from videogpt_jax.models import axial_kernel
from videogpt_jax.models.axial_attention import AxialBlock, AxisAttention
from videogpt_jax.models.vqvae import VQVAE

# Measured (jax 0.10.2, CPU): float32 within ~1e-6 of the XLA path's norm. In bfloat16 both paths are ~5e-3 from a
# float32 computation with the same (rounded) inputs, 6e-2 for the output bias's gradient (a sum of bf16 terms).
TOL = 1e-5


def _x(shape, dtype=jnp.float32, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32).astype(dtype)


def _value_and_grads(module, params, x):
  """`(out, (d params, d x))` of a loss that weights every output element differently."""
  def loss(params, x):
    out = module.apply({"params": params}, x)
    weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
    return (out.astype(jnp.float32) * weights).sum(), out
  grads, out = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, x)
  return out, grads


@pytest.mark.parametrize("shape,heads,axis", [
    ((2, 4, 8, 8, 16), 2, 3),  # W: rows of 8, 16 per 128-token chunk
    ((2, 4, 8, 8, 16), 2, 2),  # H: the axis moved next to the channels
    ((2, 4, 8, 8, 16), 2, 1),  # T: rows of 4
    ((1, 2, 4, 32, 24), 3, 3),  # rows of 32 (BAIR's W), head dim 8 padded to 128 lanes
    ((4, 4, 8, 16, 16), 2, 3),  # 2,048 tokens: the backward's two halves, each accumulating over two steps
])
def test_kernel_matches_xla_forward_and_gradients(shape, heads, axis):
  x = _x(shape)
  xla = AxisAttention(heads, axis)
  params = xla.init(jax.random.PRNGKey(1), x)["params"]
  out, (dparams, dx) = _value_and_grads(AxisAttention(heads, axis, kernel="pallas_interpret"), params, x)
  ref, (ref_dparams, ref_dx) = _value_and_grads(xla, params, x)
  assert out.shape == x.shape and out.dtype == x.dtype
  assert rel_err(out, ref) < TOL and rel_err(dx, ref_dx) < TOL
  for (path, g), ref_g in zip(jax.tree_util.tree_flatten_with_path(dparams)[0], jax.tree.leaves(ref_dparams)):
    assert g.shape == ref_g.shape and rel_err(g, ref_g) < TOL, jax.tree_util.keystr(path)
  # The check can fail: attention along another axis is far off.
  other = AxisAttention(heads, 1 if axis != 1 else 3).apply({"params": params}, x)
  assert rel_err(other, ref) > 100 * TOL


@pytest.mark.parametrize("axis", [3, 1])
def test_kernel_in_bfloat16_is_as_close_to_float32_as_xla(axis):
  """bf16 inputs and parameters: the kernel's outputs and gradients are no further from a float32 computation on
  the same rounded values than the XLA path's bf16 ones (both round in different places)."""
  x = _x((2, 4, 8, 8, 16), jnp.bfloat16)
  params = AxisAttention(2, axis).init(jax.random.PRNGKey(1), x.astype(jnp.float32))["params"]
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  f32 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float32), tree)
  truth = jax.tree.leaves(_value_and_grads(AxisAttention(2, axis), f32(params), f32(x)))
  kernel = jax.tree.leaves(_value_and_grads(AxisAttention(2, axis, kernel="pallas_interpret"), params, x))
  xla = jax.tree.leaves(_value_and_grads(AxisAttention(2, axis), params, x))
  for k, r, t in zip(kernel, xla, truth):
    assert k.dtype == jnp.bfloat16 and k.shape == t.shape
    assert rel_err(f32(k), t) <= 1.25 * rel_err(f32(r), t) + 2e-3


def test_kernel_parameters_are_the_xla_paths():
  """Same names, shapes, logical axes and initial values: a checkpoint of either kernel restores into the other."""
  x = _x((2, 4, 8, 8, 16))
  xla = AxialBlock(2).init(jax.random.PRNGKey(3), x)
  kernel = AxialBlock(2, kernel="pallas_interpret").init(jax.random.PRNGKey(3), x)
  assert jax.tree.structure(xla) == jax.tree.structure(kernel)
  for a, b in zip(jax.tree.leaves(xla), jax.tree.leaves(kernel)):
    np.testing.assert_array_equal(a, b)
  names = lambda tree: [getattr(leaf, "names", None) for leaf in jax.tree.leaves(
      tree, is_leaf=lambda v: hasattr(v, "names"))]
  assert names(xla) == names(kernel) and ("embed", "heads", "kv") in names(xla)


def test_pallas_runs_the_xla_path_off_tpu():
  """`"pallas"` is the TPU kernel: a VQ-VAE trained with it evaluates on CPU/GPU through the XLA path."""
  x = _x((2, 4, 8, 8, 16))
  params = AxialBlock(2).init(jax.random.PRNGKey(0), x)
  ref = AxialBlock(2).apply(params, x)
  np.testing.assert_array_equal(AxialBlock(2, kernel="pallas", platform="cpu").apply(params, x), ref)
  lowered = jax.jit(AxialBlock(2, kernel="pallas", platform="cpu").apply).lower(params, x).as_text()
  assert "tpu_custom_call" not in lowered


@pytest.mark.parametrize("mesh_shape", [(4, 1, 1), (2, 1, 2)])
def test_kernel_under_a_mesh_splits_the_tokens_and_sums_the_weight_gradients(mesh_shape):
  """Over 4 devices (batch only, or batch and model): each runs the kernel on its tokens inside shard_map; the
  weight gradients are the sums over the devices (equal to the XLA path's), the input gradient stays split."""
  x = _x((4, 2, 8, 8, 16))
  params = AxisAttention(2, 2).init(jax.random.PRNGKey(2), x)["params"]
  mesh = jax.make_mesh(mesh_shape, ("data", "fsdp", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=jax.devices()[:4])
  with jax.set_mesh(mesh):
    spec = axial_kernel._token_spec((4 * 2 * 8 * 8, 16))
  assert spec == jax.sharding.PartitionSpec(("data", "model") if mesh_shape[2] > 1 else ("data",), None)
  xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  with jax.set_mesh(mesh):
    out, (dparams, dx) = _value_and_grads(AxisAttention(2, 2, kernel="pallas_interpret"), params, xs)
  ref, (ref_dparams, ref_dx) = _value_and_grads(AxisAttention(2, 2), params, x)
  assert rel_err(out, ref) < 1e-5 and rel_err(dx, ref_dx) < 1e-5
  for g, ref_g in zip(jax.tree.leaves(dparams), jax.tree.leaves(ref_dparams)):
    assert rel_err(g, ref_g) < 1e-5
  assert dx.sharding.spec[0] in ("data", ("data",), ("data", "model"))


_TINY_VQVAE = dict(embedding_dim=8, n_codes=16, n_hiddens=16, n_res_layers=1, downsample=(2, 4, 4), attention=True)


def test_vqvae_reconstructs_through_the_kernel():
  """`attn_kernel` reaches every residual block: the same variables reconstruct the same video through the
  interpreted kernel as through the XLA path; "pallas" off TPU is the XLA path itself (the same program)."""
  video = _x((4, 4, 16, 16, 3)) * 0.2  # latent 2 x 4 x 4: 128 tokens
  variables = jax.jit(VQVAE(**_TINY_VQVAE).init)({"params": jax.random.PRNGKey(0)}, video)
  xla = jax.jit(VQVAE(**_TINY_VQVAE).apply)
  ref, _ = xla(variables, video)
  kernel, _ = jax.jit(VQVAE(**_TINY_VQVAE, attn_kernel="pallas_interpret").apply)(variables, video)
  assert rel_err(kernel, ref) < 1e-5
  off_tpu = jax.jit(VQVAE(**_TINY_VQVAE, attn_kernel="pallas").apply).lower(variables, video).as_text()
  assert off_tpu == xla.lower(variables, video).as_text()
  # The check can fail: other attention weights give another reconstruction.
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p * 2 if "attn" in jax.tree_util.keystr(path) else p, variables["params"])
  assert rel_err(xla({**variables, "params": params}, video)[0], ref) > 100 * TOL


@pytest.mark.slow
def test_vqvae_with_the_kernel_matches_xla():
  """A training-mode VQ-VAE step (BatchNorm statistics, codebook) with the interpreted kernel in every residual
  block: same loss and gradients as the XLA path, from the same variables (~40 s)."""
  model = _TINY_VQVAE
  video = _x((4, 4, 16, 16, 3)) * 0.2  # latent 2 x 4 x 4: 128 tokens

  def loss_and_grads(attn_kernel):
    vqvae = VQVAE(**model, attn_kernel=attn_kernel)
    variables = jax.jit(VQVAE(**model).init)({"params": jax.random.PRNGKey(0), "codebook": jax.random.PRNGKey(1)},
                                             video)

    def loss(params):
      (_, aux), _ = vqvae.apply({**variables, "params": params}, video, train=True,
                                mutable=["batch_stats", "codebook"], rngs={"codebook": jax.random.PRNGKey(2)})
      return aux["loss"]
    return jax.jit(jax.value_and_grad(loss))(variables["params"])

  (loss, grads), (ref_loss, ref_grads) = loss_and_grads("pallas_interpret"), loss_and_grads("xla")
  assert abs(float(loss) - float(ref_loss)) < 1e-5 * abs(float(ref_loss))
  assert rel_err(jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)]),
                 jnp.concatenate([g.ravel() for g in jax.tree.leaves(ref_grads)])) < 1e-4


def test_bad_kernel_and_shapes_are_one_line_errors():
  x = _x((2, 4, 8, 8, 16))
  with pytest.raises(ValueError, match="attn_kernel must be one of"):
    AxisAttention(2, 3, kernel="splash").init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="attn_kernel must be one of"):
    VQVAE(embedding_dim=8, n_codes=16, n_hiddens=16, attn_kernel="flash").init(
        jax.random.PRNGKey(0), _x((1, 4, 16, 16, 3)))
  with pytest.raises(ValueError, match=r"rows whose length divides 128, got 6 .*attn_kernel='xla'"):
    AxisAttention(2, 3, kernel="pallas_interpret").init(jax.random.PRNGKey(0), _x((2, 4, 8, 6, 16)))
  with pytest.raises(ValueError, match=r"multiple of 128 tokens per device, got 64.*attn_kernel='xla'"):
    AxisAttention(2, 3, kernel="pallas_interpret").init(jax.random.PRNGKey(0), _x((1, 2, 4, 8, 16)))


def test_declared_flops_are_what_the_kernel_computes():
  """The flops each call tells the TPU compiler (`pl.CostEstimate`) against XLA's own count of the same kernel run
  by the interpreter (one grid step, so nothing sits in an uncounted loop): projections over padded heads and score
  matmuls over whole 128-token chunks; XLA adds the softmax's and masks' elementwise flops (< 2%)."""
  n, c, dp, heads = 512, 48, 128, 2
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  x, g = (jax.random.normal(k, (n, c)) for k in keys[:2])  # distinct operands: XLA would merge equal matmuls
  wq, wk, wv = (jax.random.normal(k, (heads, c, dp)) for k in keys[2:5])
  wo, bo = jax.random.normal(keys[5], (heads, dp, c)), jnp.zeros((1, c))
  call = dict(length=8, scale=0.1, interpret=True)
  counted = {
      False: jax.jit(lambda *a: axial_kernel._call_forward(*a, **call)).lower(x, wq, wk, wv, wo, bo),
      True: jax.jit(lambda *a: axial_kernel._call_backward(*a, **call)).lower(x, g, wq, wk, wv, wo)}
  for backward, lowered in counted.items():
    flops = lowered.compile().cost_analysis()["flops"]
    declared = axial_kernel._flops(n, c, dp, heads, backward=backward)
    assert declared <= flops <= 1.02 * declared, (backward, flops, declared)
