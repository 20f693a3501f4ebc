"""GPT prior: parity with the original (logits, loss, intermediates, frame encoder) and model properties."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import fixtures
from videogpt_jax.convert.torch_gpt import load_gpt
from videogpt_jax import sharding
from videogpt_jax.models import attention_patterns, conditioning, gpt as gpt_lib, sampling
from videogpt_jax.models.gpt import GPT

VARIANTS = ("uncond", "framecond", "classcond")
TOL = 1e-5


@functools.lru_cache(maxsize=None)
def original(variant: str):
  """`(arrays, module, variables, cond)` of fixture `gpt_small_<variant>.npz`, imported with load_gpt."""
  z, sd, args = fixtures.original_gpt(variant)
  module, variables = load_gpt(sd, **args)
  cond = conditioning.make_cond(
      frames=jnp.asarray(fixtures.nthwc(z["cond_frames"])) if "cond_frames" in z.files else None,
      label=jnp.asarray(z["labels"], jnp.int32) if "labels" in z.files else None)
  return z, module, variables, cond


@functools.lru_cache(maxsize=None)
def _forward_with_intermediates(variant: str):
  z, module, variables, cond = original(variant)
  fn = jax.jit(lambda v, c, cond: module.apply(v, c, cond, mutable=["intermediates"]))
  logits, state = fn(variables, jnp.asarray(z["codes"], jnp.int32), cond)
  return np.asarray(logits), jax.tree.map(np.asarray, state["intermediates"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_loss_match_original(variant):
  z, *_ = original(variant)
  logits, _ = _forward_with_intermediates(variant)
  assert logits.shape == z["logits"].shape
  assert fixtures.rel_err(logits, z["logits"]) < TOL
  nats = float(_cross_entropy(jnp.asarray(logits), jnp.asarray(z["codes"])))
  assert abs(nats - float(z["loss"])) / float(z["loss"]) < TOL
  assert abs(nats - float(z["training_step_loss"])) / float(z["loss"]) < TOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_keyword_conditioning_is_the_same_input(variant):
  """`apply(codes, cond_frames=, labels=)` (the original's API) builds the same mapping as `make_cond`."""
  z, module, variables, cond = original(variant)
  codes = jnp.asarray(z["codes"], jnp.int32)
  kw = {"cond_frames": cond.get("frames"), "labels": cond.get("label")}
  keyword = jax.jit(lambda v, c, kw: module.apply(v, c, deterministic=True, **kw))(variables, codes, kw)
  np.testing.assert_array_equal(np.asarray(keyword), _forward_with_intermediates(variant)[0])
  if cond:
    with pytest.raises(ValueError, match="not both"):
      module.apply(variables, codes, cond, **{k: v for k, v in kw.items() if v is not None})
    with pytest.raises(TypeError, match="mapping from conditioning.make_cond"):
      module.apply(variables, codes, next(iter(cond.values())))
  with pytest.raises(ValueError, match=r"unknown keys \['labels'\]"):
    module.apply(variables, codes, {"labels": jnp.zeros((codes.shape[0],), jnp.int32)})
  batch = {"video": jnp.zeros((codes.shape[0], 4, 16, 16, 3)), "label": jnp.zeros((codes.shape[0],), jnp.int32)}
  assert set(module.cond_from_batch(batch)) == set(cond)


def _cross_entropy(logits, codes):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, codes))


@pytest.mark.parametrize("variant", VARIANTS)
def test_intermediates_match_original(variant):
  z, module, *_ = original(variant)
  _, inter = _forward_with_intermediates(variant)
  names = ["fc_in_out", "attn_stack_input", *[f"block{i}_out" for i in range(module.layers)], "attn_stack_out",
           "final_norm_out"]
  for name in names:
    assert fixtures.rel_err(inter[name][0], z[f"intermediate/{name}"]) < TOL, name
  if variant == "framecond":
    for name in ("frame_cond_resnet_out", "frame_cond_embd"):
      assert inter[name][0].shape == z[name].shape
      assert fixtures.rel_err(inter[name][0], z[name]) < TOL, name
  else:
    assert "frame_cond_resnet_out" not in inter


def tiny_gpt(attn_type: str = "full", **overrides) -> tuple[GPT, dict]:
  """A small random prior over a `(4, 8, 8)` grid (256 tokens: 8 blocks of the sparse pattern)."""
  kw = dict(shape=(4, 8, 8), n_codes=16, embedding_dim=8, hidden_dim=24, heads=2, layers=2, attn_type=attn_type,
            dropout=0.0, attn_dropout=0.0)
  kw.update(overrides)
  module = GPT(**kw)
  # Parameters do not depend on the attention pattern or the dropout rates: initialise once per architecture.
  return module, _tiny_variables(module.clone(attn_type="full", dropout=0.0, attn_dropout=0.0))


@functools.lru_cache(maxsize=None)
def _tiny_variables(module: GPT) -> dict:
  cond = conditioning.make_cond(
      frames=jnp.zeros((1, module.n_cond_frames, *module.frame_shape, 3)) if module.n_cond_frames else None,
      label=jnp.zeros((1,), jnp.int32) if module.class_cond_dim else None)
  codes = jnp.zeros((1, *module.shape), jnp.int32)
  variables = nn.meta.unbox(jax.jit(lambda key: module.init(key, codes, cond))(jax.random.PRNGKey(0)))
  # fc_out is zero-initialised as in the original; random weights make the logits depend on the input.
  variables["params"]["fc_out"]["kernel"] = jax.random.normal(jax.random.PRNGKey(1),
                                                              variables["params"]["fc_out"]["kernel"].shape)
  return variables


def random_codes(module: GPT, batch: int = 2, seed: int = 0) -> jax.Array:
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, *module.shape), 0, module.n_codes, jnp.int32)


@pytest.mark.parametrize("attn_type", ["full", "axial", "sparse"])
def test_causality(attn_type):
  """Changing the token at p never changes the logits at positions <= p (they predict tokens <= p)."""
  module, variables = tiny_gpt(attn_type)
  jitted = jax.jit(lambda v, c: module.apply(v, c).reshape(c.shape[0], module.seq_len, -1))
  fn = lambda c: jitted(variables, c)  # noqa: E731
  codes = random_codes(module)
  base = np.asarray(fn(codes))
  for p in (0, 37, 100, 200):
    flat = codes.reshape(2, -1)
    changed = flat.at[:, p].set((flat[:, p] + 1) % module.n_codes).reshape(codes.shape)
    out = np.asarray(fn(changed))
    np.testing.assert_array_equal(out[:, :p + 1], base[:, :p + 1])
    # p + 1 attends to p under every pattern (same row, same local block), so the change is visible there.
    assert np.abs(out[:, p + 1] - base[:, p + 1]).max() > 1e-4


@pytest.mark.parametrize("attn_type", ["full", "sparse"])
def test_dropout_only_when_not_deterministic(attn_type):
  module, variables = tiny_gpt(attn_type, dropout=0.3, attn_dropout=0.3)
  codes = random_codes(module)
  jitted = jax.jit(lambda v, key, det: module.apply(v, codes, deterministic=det, rngs={"dropout": key}),
                   static_argnums=2)
  run = lambda key, det: jitted(variables, key, det)  # noqa: E731
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  clean = np.asarray(run(k1, True))
  np.testing.assert_array_equal(np.asarray(run(k2, True)), clean)
  np.testing.assert_allclose(np.asarray(module.apply(variables, codes)), clean, rtol=1e-5, atol=1e-5)
  a, b, a2 = np.asarray(run(k1, False)), np.asarray(run(k2, False)), np.asarray(run(k1, False))
  assert np.abs(a - clean).max() > 1e-3 and np.abs(a - b).max() > 1e-3
  np.testing.assert_array_equal(a, a2)


@pytest.mark.parametrize("attn_type", ["full", "axial", "sparse"])
def test_attention_dropout_applies_to_every_pattern(attn_type):
  """`attn_dropout` alone (no residual dropout) changes the training forward of every pattern, sparse included."""
  module, variables = tiny_gpt(attn_type, dropout=0.0, attn_dropout=0.3)
  codes = random_codes(module)
  run = jax.jit(lambda v, key, det: module.apply(v, codes, deterministic=det, rngs={"dropout": key}),
                static_argnums=2)
  clean = np.asarray(run(variables, jax.random.PRNGKey(1), True))
  dropped = np.asarray(run(variables, jax.random.PRNGKey(1), False))
  assert np.abs(dropped - clean).max() > 1e-3
  no_drop = module.clone(attn_dropout=0.0)
  np.testing.assert_allclose(
      np.asarray(no_drop.apply(variables, codes, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})),
      clean, rtol=1e-5, atol=1e-5)


def test_sparse_layout_fields_reach_the_attention():
  module, _ = tiny_gpt("sparse")
  assert module.attention_pattern == attention_patterns.make("sparse", (4, 8, 8), block=32, local_blocks=4)
  small = module.clone(sparse_block=16, sparse_local_blocks=2).attention_pattern
  assert (small.block, small.local_blocks) == (16, 2)
  assert small.mask().sum() < module.attention_pattern.mask().sum()
  with pytest.raises(ValueError, match="not divisible by block"):
    module.clone(sparse_block=48).attention_pattern  # pylint: disable=expression-not-assigned


def test_remat_gives_same_logits_and_gradients():
  module, variables = tiny_gpt()
  remat = module.clone(remat=True)
  codes = random_codes(module)

  def loss_fn(m):
    return jax.jit(jax.value_and_grad(lambda p: _cross_entropy(m.apply({**variables, "params": p}, codes), codes)))

  (l1, g1), (l2, g2) = loss_fn(module)(variables["params"]), loss_fn(remat)(variables["params"])
  assert float(l1) == pytest.approx(float(l2), rel=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Dropout inside the rematerialised blocks draws the same masks.
  drop, drop_remat = module.clone(dropout=0.3), remat.clone(dropout=0.3)
  run = jax.jit(lambda v, key: (drop.apply(v, codes, deterministic=False, rngs={"dropout": key}),
                                drop_remat.apply(v, codes, deterministic=False, rngs={"dropout": key})))
  a, b = run(variables, jax.random.PRNGKey(3))
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("remat, policy", [(False, "full"), (True, "full"), (True, "save_dots_no_batch")])
def test_scanned_layers_are_the_original_loop(remat, policy):
  """`scan_layers=True` over the stacked parameters of the imported original gives its logits, the loop's
  gradients (unstacked) and, through the sampler's loop form, the loop's samples."""
  z, module, variables, cond = original("framecond")
  scan = module.clone(scan_layers=True, remat=remat, remat_policy=policy)
  stacked = gpt_lib.stack_layers(variables, module.layers)
  assert set(stacked["params"]) == {k for k in variables["params"] if not k.startswith("blocks_")} | {"blocks"}
  assert jax.tree.leaves(stacked["params"]["blocks"])[0].shape[0] == module.layers
  codes = jnp.asarray(z["codes"], jnp.int32)
  logits = jax.jit(lambda v: scan.apply(v, codes, cond))(stacked)
  np.testing.assert_allclose(logits, z["logits"], rtol=TOL, atol=TOL)

  def grads(m, v):
    return jax.jit(jax.grad(lambda p: _cross_entropy(m.apply({**v, "params": p}, codes, cond), codes)))(v["params"])

  g_loop, g_scan = grads(module, variables), grads(scan, stacked)
  g_scan = gpt_lib.unstack_layers({"params": g_scan}, module.layers)["params"]
  assert jax.tree.structure(g_scan) == jax.tree.structure(g_loop)
  for a, b in zip(jax.tree.leaves(g_loop), jax.tree.leaves(g_scan)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  if not remat:
    key, n = jax.random.key(7), codes.shape[0]
    np.testing.assert_array_equal(sampling.sample(scan, stacked, key, n, cond=cond),
                                  sampling.sample(module, variables, key, n, cond=cond))
    with pytest.raises(ValueError, match="as_loop"):
      scan.apply(stacked, cond, n, method=GPT.prepare_decode)


def test_scanned_layers_stack_on_a_replicated_layers_axis():
  module, loop_variables = tiny_gpt()
  scan = module.clone(scan_layers=True)
  boxed = jax.eval_shape(lambda: scan.init(jax.random.PRNGKey(0), random_codes(scan)[:1]))
  kernel = boxed["params"]["blocks"]["fc1"]["kernel"]
  assert kernel.names == ("layers", "embed", "mlp") and kernel.value.shape == (2, 24, 96)
  assert sharding.logical_to_mesh_spec(kernel.names) == jax.sharding.PartitionSpec(None, "fsdp", "model")
  # Dropout runs under the scan (`deterministic` reaches the body as a Python bool): keys change the output.
  drop, codes = scan.clone(dropout=0.5), random_codes(scan)
  variables = gpt_lib.stack_layers(loop_variables, module.layers)
  run = jax.jit(lambda key: drop.apply(variables, codes, deterministic=False, rngs={"dropout": key}))
  a, b = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
  assert bool(jnp.isfinite(a).all()) and float(jnp.abs(a - b).max()) > 1e-3
  np.testing.assert_array_equal(drop.apply(variables, codes), scan.apply(variables, codes))
  with pytest.raises(ValueError, match="remat_policy must be one of"):
    module.clone(remat=True, remat_policy="dots").init(jax.random.PRNGKey(0), random_codes(module)[:1])


def test_bfloat16_compute_keeps_float32_params():
  module, variables = tiny_gpt()
  codes = random_codes(module)
  bf16 = module.clone(dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(bf16.init(jax.random.PRNGKey(0), codes[:1])))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes["params"]))
  out, ref = jax.jit(lambda v, c: (bf16.apply(v, c), module.apply(v, c)))(variables, codes)
  assert out.dtype == jnp.float32
  assert 1e-6 < fixtures.rel_err(out, ref) < 5e-2  # bf16 really used, and still close


def test_params_carry_logical_axis_names():
  module = GPT(shape=(2, 4, 4), n_codes=16, embedding_dim=8, hidden_dim=24, heads=2, layers=1, n_cond_frames=1,
               frame_shape=(8, 8), class_cond_dim=3)
  cond = conditioning.make_cond(frames=jnp.zeros((1, 1, 8, 8, 3)), label=jnp.zeros((1,), jnp.int32))
  boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 4, 4), jnp.int32), cond))
  specs = nn.get_partition_spec(boxed)["params"]
  assert tuple(specs["fc_out"]["kernel"]) == ("embed", "vocab")
  assert tuple(specs["blocks_0"]["attn"]["w_qs"]["kernel"]) == ("embed", "heads")
  assert tuple(specs["blocks_0"]["fc1"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["resnet"]["group1"]["start_block"]["conv1"]["kernel"]) == (
      "conv_k", "conv_k", "conv_k", "conv_in", "conv_out")
  vocab = {"batch", "length", "embed", "mlp", "heads", "kv", "vocab", "codebook", "conv_in", "conv_out", "conv_k",
           "norm", None}
  leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) and set(x.names) <= vocab for x in leaves)
  assert "codebook" in boxed and boxed["codebook"]["embeddings"].shape == (16, 8)


def test_bad_inputs_raise_clear_errors():
  module = GPT(shape=(4, 8, 8), n_codes=16, embedding_dim=8, hidden_dim=24, heads=2, layers=1, class_cond_dim=3)
  codes = jnp.zeros((2, 4, 8, 8), jnp.int32)
  labels = jnp.zeros((2,), jnp.int32)

  def init(m=module, c=codes, **kw):
    return jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), c, conditioning.make_cond(**kw)))

  init(label=labels)  # the valid call works
  with pytest.raises(ValueError, match="labels"):
    init()
  with pytest.raises(ValueError, match="codes must be"):
    init(c=codes[:, :2], label=labels)
  with pytest.raises(ValueError, match=r"cond\['frames'\]"):
    init(label=labels, frames=jnp.zeros((2, 1, 8, 8, 3)))
  with pytest.raises(ValueError, match="attn_type"):
    init(module.clone(class_cond_dim=None, attn_type="local"))
  with pytest.raises(ValueError, match="divide by 3"):
    init(module.clone(class_cond_dim=None, hidden_dim=32))
  with pytest.raises(ValueError, match="frame_shape"):
    init(module.clone(class_cond_dim=None, n_cond_frames=1), frames=jnp.zeros((2, 1, 8, 8, 3)))
  with pytest.raises(ValueError, match="GPT platform must be one of"):
    init(module.clone(class_cond_dim=None, platform="TPU"))
  with pytest.raises(ValueError, match="attention kernel 'no_such_kernel' is not available"):
    init(module.clone(class_cond_dim=None, attn_kernel="no_such_kernel"))
  with pytest.raises(ValueError, match="attention kernel 'cudnn' is not available for attn_type='sparse'"):
    init(module.clone(class_cond_dim=None, attn_type="sparse", attn_kernel="cudnn"))


@pytest.mark.parametrize("frames,strides,size,k", [
    (1, (1, 1, 1), 8, 3), (1, (1, 2, 2), 8, 3), (3, (1, 1, 1), 8, 3), (3, (1, 2, 2), 8, 3),
    (1, (1, 2, 2), 7, 3), (3, (1, 2, 2), 7, 3), (2, (1, 2, 2), 8, 1), (2, (1, 2, 2), 7, 1)])
def test_frame_encoder_conv_is_pytorch_padding(frames, strides, size, k):
  """Every formulation of the ResNet conv equals one 3-D convolution with symmetric padding (k-1)/2, gradients too."""
  from videogpt_jax.models.conditioning import Conv3d
  x = jax.random.normal(jax.random.PRNGKey(0), (2, frames, size, size, 4))
  conv = Conv3d(5, k, strides)
  variables = conv.init(jax.random.PRNGKey(1), x)
  kernel = nn.meta.unbox(variables)["params"]["kernel"]
  pad = (k - 1) // 2

  def ref_fn(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, strides, [(pad, pad)] * 3,
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))

  def ours_fn(x, kernel):
    return conv.apply({"params": {"kernel": kernel}}, x)

  ref, out = ref_fn(x, kernel), ours_fn(x, kernel)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * ref)  # noqa: E731
  for got, want in zip(jax.grad(loss(ours_fn), (0, 1))(x, kernel), jax.grad(loss(ref_fn), (0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_missing_codebook_is_a_clear_error():
  module, variables = tiny_gpt()
  with pytest.raises(ValueError, match=r"variables\['codebook'\]\['embeddings'\]"):
    module.apply({"params": variables["params"]}, random_codes(module))
