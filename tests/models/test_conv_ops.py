"""The original's padding in the functional convolutions, and every exact CPU reformulation of them, against a
brute-force NumPy reference and the direct XLA convolution (forward and gradients)."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogpt_jax.models import conditioning, conv_cpu, conv_ops
from videogpt_jax.models.gpt import GPT
from videogpt_jax.models.vqvae import VQVAE


def _np_conv3d(x, w, strides, pads):
  """Cross-correlation, x (B,T,H,W,Ci), w (kT,kH,kW,Ci,Co)."""
  x = np.pad(x, [(0, 0), *pads, (0, 0)])
  k = w.shape[:3]
  out_shape = [(x.shape[1 + i] - k[i]) // strides[i] + 1 for i in range(3)]
  y = np.zeros((x.shape[0], *out_shape, w.shape[-1]), np.float64)
  for t in range(out_shape[0]):
    for h in range(out_shape[1]):
      for v in range(out_shape[2]):
        patch = x[:, t * strides[0]:t * strides[0] + k[0], h * strides[1]:h * strides[1] + k[1],
                  v * strides[2]:v * strides[2] + k[2]]
        y[:, t, h, v] = np.einsum("bthwi,thwio->bo", patch, w)
  return y


def _np_conv_transpose3d(x, w, strides):
  """The original: pad like SamePadConv3d, then a PyTorch ConvTranspose3d with padding k-1 (scatter form)."""
  k = w.shape[:3]
  x = np.pad(x, [(0, 0), *conv_ops.same_padding(k, strides), (0, 0)])
  full = [(x.shape[1 + i] - 1) * strides[i] + k[i] for i in range(3)]
  y = np.zeros((x.shape[0], *full, w.shape[-1]), np.float64)
  for t in range(x.shape[1]):
    for h in range(x.shape[2]):
      for v in range(x.shape[3]):
        contrib = np.einsum("bi,thwio->bthwo", x[:, t, h, v], w)
        y[:, t * strides[0]:t * strides[0] + k[0], h * strides[1]:h * strides[1] + k[1],
          v * strides[2]:v * strides[2] + k[2]] += contrib
  crop = [kk - 1 for kk in k]
  return y[:, crop[0]:full[0] - crop[0], crop[1]:full[1] - crop[1], crop[2]:full[2] - crop[2]]


@pytest.mark.parametrize("k,s", [((4, 4, 4), (2, 2, 2)), ((4, 4, 4), (2, 1, 1)), ((3, 3, 3), (1, 1, 1)),
                                 ((4, 4, 4), (1, 1, 1)), ((1, 1, 1), (1, 1, 1))])
def test_same_padding_conv_matches_reference(k, s):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 6, 5, 3)).astype(np.float32)
  w = rng.normal(size=(*k, 3, 4)).astype(np.float32)
  ref = _np_conv3d(x, w, s, conv_ops.same_padding(k, s))
  np.testing.assert_allclose(np.asarray(conv_ops.conv3d(x, w, s, impl="direct")), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,s", [((4, 4, 4), (2, 2, 2)), ((4, 4, 4), (2, 1, 1)), ((4, 4, 4), (1, 1, 1))])
def test_transposed_conv_matches_reference_and_scales_shape(k, s):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 4, 5, 3)).astype(np.float32)
  w = rng.normal(size=(*k, 3, 4)).astype(np.float32)
  ref = _np_conv_transpose3d(x, w, s)
  out = np.asarray(conv_ops.conv_transpose3d(x, w, s, impl="direct"))
  assert out.shape == (2, 3 * s[0], 4 * s[1], 5 * s[2], 4)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_same_padding_puts_larger_half_on_the_left():
  assert conv_ops.same_padding((4, 4, 3), (1, 2, 1)) == [(2, 1), (1, 1), (1, 1)]


def test_unknown_impl_is_a_clear_error():
  with pytest.raises(ValueError, match="conv impl"):
    conv_ops.conv3d(np.zeros((1, 2, 2, 2, 1), np.float32), np.zeros((1, 1, 1, 1, 1), np.float32), impl="nope")


# ------------------------------------------------------------------------ exact CPU reformulations (conv_cpu)
_CONV_CASES = [((4, 4, 4), (2, 2, 2)), ((4, 4, 4), (2, 1, 1)), ((4, 4, 4), (1, 2, 2)), ((3, 3, 3), (1, 1, 1)),
               ((1, 1, 1), (1, 1, 1)), ((4, 4, 4), (1, 1, 1))]
_TRANSPOSE_CASES = [((4, 4, 4), (2, 2, 2)), ((4, 4, 4), (2, 1, 1)), ((4, 4, 4), (1, 2, 2)), ((4, 4, 4), (1, 1, 1))]
# Odd and tiny sizes (including a time axis shorter than the stride, where the output is empty).
_SHAPES = [(2, 5, 7, 3, 4), (1, 1, 3, 2, 2)]


@functools.lru_cache(maxsize=None)
def _conv_case(k, s, shape, seed):
  """Inputs and NumPy reference, shared by the parametrisations over impls (the brute force is the slow part)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  w = rng.normal(size=(*k, shape[-1], 5)).astype(np.float32)
  return x, w, _np_conv3d(x, w, s, conv_ops.same_padding(k, s))


@functools.lru_cache(maxsize=None)
def _transpose_case(k, s, shape, co, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  w = rng.normal(size=(*k, shape[-1], co)).astype(np.float32)
  return x, w, _np_conv_transpose3d(x, w, s)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  if b.size == 0:
    return 0.0
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _grads(fn, x, w, ct):
  return jax.grad(lambda x, w: jnp.vdot(fn(x, w), ct), argnums=(0, 1))(x, w)


@pytest.mark.parametrize("impl", [i for i in conv_ops.CONV_IMPLS if i != "direct"])
@pytest.mark.parametrize("k,s", _CONV_CASES)
def test_conv_formulations_equal_direct_and_reference(impl, k, s):
  for shape in _SHAPES:
    x, w, ref = _conv_case(k, s, shape, 2)
    direct = np.asarray(conv_ops.conv3d(x, w, s, impl="direct"))
    out = np.asarray(jax.jit(lambda x, w: conv_ops.conv3d(x, w, s, impl=impl))(x, w))
    assert _rel(out, ref) <= 1e-5
    assert _rel(out, direct) <= 1e-5


@pytest.mark.parametrize("impl", [i for i in conv_ops.TRANSPOSE_IMPLS if i != "direct"])
@pytest.mark.parametrize("k,s", _TRANSPOSE_CASES)
def test_transposed_formulations_equal_direct_and_reference(impl, k, s):
  for shape, co in [((2, 3, 4, 5, 3), 4), ((1, 1, 3, 2, 4), 2)]:
    x, w, ref = _transpose_case(k, s, shape, co, 3)
    direct = np.asarray(conv_ops.conv_transpose3d(x, w, s, impl="direct"))
    out = np.asarray(jax.jit(lambda x, w: conv_ops.conv_transpose3d(x, w, s, impl=impl))(x, w))
    assert out.shape == (shape[0], shape[1] * s[0], shape[2] * s[1], shape[3] * s[2], co)
    assert _rel(out, ref) <= 1e-5
    assert _rel(out, direct) <= 1e-5


@pytest.mark.parametrize("impl", [i for i in conv_ops.CONV_IMPLS if i != "direct"])
@pytest.mark.parametrize("k,s", [((4, 4, 4), (2, 2, 2)), ((4, 4, 4), (2, 1, 1)), ((3, 3, 3), (1, 1, 1)),
                                 ((1, 1, 1), (1, 1, 1))])
def test_conv_formulation_gradients_equal_direct(impl, k, s):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 5, 6, 7, 3)).astype(np.float32)
  w = rng.normal(size=(*k, 3, 4)).astype(np.float32)
  ct = rng.normal(size=conv_ops.conv3d_direct(x, w, s).shape).astype(np.float32)
  ref = _grads(lambda a, b: conv_ops.conv3d(a, b, s, impl="direct"), x, w, ct)
  got = jax.jit(lambda x, w: _grads(lambda a, b: conv_ops.conv3d(a, b, s, impl=impl), x, w, ct))(x, w)
  assert _rel(got[0], ref[0]) <= 1e-4
  assert _rel(got[1], ref[1]) <= 1e-4


@pytest.mark.parametrize("impl", [i for i in conv_ops.TRANSPOSE_IMPLS if i != "direct"])
@pytest.mark.parametrize("s", [(2, 2, 2), (2, 1, 1), (1, 1, 1)])
def test_transposed_formulation_gradients_equal_direct(impl, s):
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 3, 4, 5, 3)).astype(np.float32)
  w = rng.normal(size=(4, 4, 4, 3, 4)).astype(np.float32)
  ct = rng.normal(size=conv_ops.conv_transpose3d_direct(x, w, s).shape).astype(np.float32)
  ref = _grads(lambda a, b: conv_ops.conv_transpose3d(a, b, s, impl="direct"), x, w, ct)
  got = jax.jit(lambda x, w: _grads(lambda a, b: conv_ops.conv_transpose3d(a, b, s, impl=impl), x, w, ct))(x, w)
  assert _rel(got[0], ref[0]) <= 1e-4
  assert _rel(got[1], ref[1]) <= 1e-4


def test_auto_follows_the_explicit_platform():
  x_shape, k_shape = (4, 8, 32, 32, 128), (4, 4, 4, 128, 128)
  assert conv_ops.auto_conv("cpu", x_shape, k_shape, (2, 2, 2)) in conv_cpu.CONV_FORMS
  assert conv_ops.auto_transpose("cpu", x_shape, k_shape, (2, 2, 2)) in conv_cpu.TRANSPOSE_FORMS
  for platform in ("tpu", "gpu"):
    assert conv_ops.auto_conv(platform, x_shape, k_shape, (2, 2, 2)) == "direct"
    assert conv_ops.auto_transpose(platform, x_shape, k_shape, (2, 2, 2)) == "direct"
  with pytest.raises(ValueError, match="platform must be one of"):
    conv_ops.conv3d(np.zeros((1, 2, 2, 2, 1), np.float32), np.zeros((1, 1, 1, 1, 1), np.float32), platform="TPU")


def conv_ranks(fn, *args) -> set[int]:
  """Spatial ranks of the convolutions in `fn`'s lowered program (3: one 3-D XLA conv, 2: a CPU reformulation)."""
  text = jax.jit(fn).lower(*args).as_text()
  dims = re.findall(r"dim_numbers = \[b, ([0-9, ]*), f\]x", text)
  assert dims, "no convolution in the lowered program"
  return {len(d.split(",")) for d in dims}


@pytest.mark.parametrize("transposed", [False, True])
def test_functional_conv_for_tpu_lowers_one_direct_conv_on_this_host(transposed):
  op = conv_ops.conv_transpose3d if transposed else conv_ops.conv3d
  x, w = jnp.zeros((1, 4, 8, 8, 16)), jnp.zeros((4, 4, 4, 16, 16))
  assert conv_ranks(lambda x, w: op(x, w, (2, 2, 2), platform="tpu"), x, w) == {3}
  assert conv_ranks(lambda x, w: op(x, w, (2, 2, 2), platform="cpu"), x, w) == {2}


def test_fold_split_splits_wide_inputs_exactly():
  # 2x2x2 space-to-depth of 40 channels gives 320 > 128 channels: the split path runs (3 groups, last partial).
  rng = np.random.default_rng(6)
  x = rng.normal(size=(1, 4, 6, 4, 40)).astype(np.float32)
  w = rng.normal(size=(4, 4, 4, 40, 3)).astype(np.float32)
  ref = _np_conv3d(x, w, (2, 2, 2), conv_ops.same_padding((4, 4, 4), (2, 2, 2)))
  assert _rel(conv_ops.conv3d(x, w, (2, 2, 2), impl="fold_split"), ref) <= 1e-5


def test_impl_of_the_other_op_is_a_clear_error():
  x = np.zeros((1, 2, 2, 2, 1), np.float32)
  with pytest.raises(ValueError, match="conv impl for conv_transpose3d"):
    conv_ops.conv_transpose3d(x, np.zeros((4, 4, 4, 1, 1), np.float32), (2, 2, 2), impl="fold_cat")
  with pytest.raises(ValueError, match="channels"):
    conv_ops.conv3d(x, np.zeros((1, 1, 1, 2, 1), np.float32), impl="fold")


@pytest.mark.parametrize("platform,ranks", [("tpu", {3}), ("gpu", {3}), ("cpu", {2})])
def test_modules_lower_the_formulation_of_their_platform_whatever_the_host(platform, ranks):
  """A program lowered on this CPU host for a TPU (ahead-of-time) gets one XLA conv per layer, not the CPU forms."""
  vqvae = VQVAE(embedding_dim=4, n_codes=8, n_hiddens=8, n_res_layers=1, downsample=(2, 2, 2), platform=platform)
  video = jnp.zeros((1, 4, 8, 8, 3))
  variables = jax.eval_shape(vqvae.init, jax.random.PRNGKey(0), video)
  assert conv_ranks(lambda v, x: vqvae.apply(v, x)[0], variables, video) == ranks

  gpt = GPT(shape=(1, 2, 2), n_codes=8, embedding_dim=4, hidden_dim=24, heads=2, layers=1, n_cond_frames=2,
            frame_shape=(8, 8), cond_width=8, cond_blocks=(1, 1, 1, 1), platform=platform)
  codes, cond = jnp.zeros((1, 1, 2, 2), jnp.int32), conditioning.make_cond(frames=jnp.zeros((1, 2, 8, 8, 3)))
  variables = jax.eval_shape(lambda: gpt.init(jax.random.PRNGKey(0), codes, cond))
  assert conv_ranks(lambda v, c, f: gpt.apply(v, c, f), variables, codes, cond) == ranks


def test_modules_reject_an_unknown_platform():
  with pytest.raises(ValueError, match="VQVAE platform must be one of"):
    VQVAE(embedding_dim=4, n_codes=8, n_hiddens=8, n_res_layers=0, downsample=(2, 2, 2),
          platform="cuda").init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 4, 4, 3)))
