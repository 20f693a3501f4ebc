"""The original's padding in the functional convolutions, against a brute-force NumPy reference."""
import numpy as np
import pytest

from videogpt_jax.models import conv_ops


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
