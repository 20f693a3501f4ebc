"""UCF-101 C3D (TGAN-v2 protocol) on random weights in the published chainer npz format, and the Inception Score."""
from __future__ import annotations

import numpy as np
import pytest

from tests import fixtures
from videogpt_jax.evaluation import c3d
from videogpt_jax.evaluation import inception_score as is_lib

CONV = (4, 6, 8, 8, 8, 8, 8, 8)  # tiny widths; the published model has (64, 128, 256, 256, 512, 512, 512, 512)
FC = (16, 16)


def _write_chainer_npz(tmp_path, seed=0):
  """Random weights with the key names and layouts of `conv3d_deepnetA_ucf.npz`, plus a `mean2.npz`."""
  rng = np.random.default_rng(seed)
  arrays, cin = {}, 3
  for name, c in zip(c3d.CONV_NAMES, CONV):
    arrays[f"{name}/W"] = (rng.normal(size=(c, cin, 3, 3, 3)) * np.sqrt(2 / (27 * cin)) / 128).astype(np.float32)
    arrays[f"{name}/b"] = (0.1 * rng.normal(size=c)).astype(np.float32)
    cin = c
  for name, (i, o) in zip(c3d.FC_NAMES, ((CONV[-1] * 16, FC[0]), (FC[0], FC[1]), (FC[1], 101))):
    arrays[f"{name}/W"] = (rng.normal(size=(o, i)) * np.sqrt(2 / i)).astype(np.float32)
    arrays[f"{name}/b"] = (0.1 * rng.normal(size=o)).astype(np.float32)
  weights, mean = tmp_path / "conv3d_deepnetA_ucf.npz", tmp_path / "mean2.npz"
  np.savez(weights, **arrays)
  np.savez(mean, mean=rng.uniform(80, 120, (3, 16, 128, 128)).astype(np.float32))
  return weights, mean, arrays


def _torch_reference(videos, arrays, mean):
  """The chainer C3DVersion1UCF101 forward written independently with torch ops (NCDHW)."""
  torch = pytest.importorskip("torch")
  f = torch.nn.functional
  x = torch.from_numpy(np.clip(videos, -1, 1)).permute(0, 4, 1, 2, 3)  # NCTHW RGB
  x = x[:, [2, 1, 0]] * 128.0  # the fixed "pre" conv: RGB -> BGR, x128
  n, c, t, h, w = x.shape
  x = f.interpolate(x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w), size=(112, 112), mode="bilinear",
                    align_corners=True).reshape(n, t, c, 112, 112).permute(0, 2, 1, 3, 4)
  x = x + (128.0 - torch.from_numpy(mean[:, :, 8:120, 8:120]))
  pools = {"conv1a": (1, 2, 2), "conv2a": 2, "conv3b": 2, "conv4b": 2, "conv5b": 2}
  for name in c3d.CONV_NAMES:
    x = f.relu(f.conv3d(x, torch.from_numpy(arrays[f"{name}/W"]), torch.from_numpy(arrays[f"{name}/b"]), padding=1))
    if name in pools:  # cover_all=True == ceil_mode for these sizes
      x = f.max_pool3d(x, pools[name], ceil_mode=True)
  x = x.reshape(n, -1)
  for name in c3d.FC_NAMES:
    x = f.linear(x, torch.from_numpy(arrays[f"{name}/W"]), torch.from_numpy(arrays[f"{name}/b"]))
    if name != "fc8":
      x = f.relu(x)
  return x.numpy()


def test_cover_all_pooling_sizes_and_values():
  x = np.random.default_rng(0).uniform(size=(1, 3, 7, 7, 2)).astype(np.float32)
  y = np.asarray(c3d.max_pool_cover_all(x, (2, 2, 2)))
  assert y.shape == (1, 2, 4, 4, 2)  # floor mode would give (1, 1, 3, 3, 2)
  np.testing.assert_array_equal(y[0, 1, 3, 3], x[0, 2, 6, 6])  # the extra window sees one element
  np.testing.assert_array_equal(y[0, 0, 0, 0], x[0, :2, :2, :2].max(axis=(0, 1, 2)))
  assert c3d.output_hw(112) == 4


def test_c3d_matches_reference_forward(tmp_path):
  weights, mean_path, arrays = _write_chainer_npz(tmp_path)
  module, variables, mean = c3d.load_c3d(weights, mean_path)
  assert module.conv_features == CONV and module.fc_features == FC and module.n_classes == 101
  assert mean.shape == (16, 112, 112, 3)
  videos = np.random.default_rng(1).uniform(-1.1, 1.1, (2, 16, 40, 48, 3)).astype(np.float32)
  logits = np.asarray(module.apply(variables, c3d.preprocess(videos, mean)))
  ref = _torch_reference(videos, arrays, np.load(mean_path)["mean"])
  assert logits.shape == (2, 101)
  assert fixtures.rel_err(logits, ref) < 1e-5


def test_c3d_load_errors(tmp_path):
  weights, mean_path, arrays = _write_chainer_npz(tmp_path)
  with pytest.raises(FileNotFoundError, match="conv3d_deepnetA_ucf.npz"):
    c3d.load_c3d(tmp_path / "missing.npz", mean_path)
  bad = dict(arrays)
  del bad["fc7/b"]
  with pytest.raises(ValueError, match="fc7/b"):
    c3d.from_chainer_npz(bad)
  bad = dict(arrays, **{"fc6/W": np.zeros((16, 100), np.float32)})
  with pytest.raises(ValueError, match="fc6/W takes 100 inputs"):
    c3d.from_chainer_npz(bad)
  prefixed = {f"predictor/{k}": v for k, v in arrays.items()}  # a chain saved inside a wrapper
  assert c3d.from_chainer_npz(prefixed)[0].conv_features == CONV
  with pytest.raises(ValueError, match="16, H, W, 3"):
    c3d.preprocess(np.zeros((1, 8, 64, 64, 3), np.float32), np.zeros((16, 112, 112, 3)))


def test_inception_score_closed_forms():
  k = 10
  uniform = np.full((40, k), 1.0 / k)
  mean, std = is_lib.inception_score(uniform, splits=4)
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
  one_hot = np.tile(np.eye(k), (2, 1))  # each split of 10 samples covers every class once
  mean, std = is_lib.inception_score(one_hot, splits=2)
  assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
  # every sample confidently in the same class: IS = 1
  assert is_lib.inception_score(np.tile(np.eye(k)[:1], (20, 1)), splits=2)[0] == pytest.approx(1.0, abs=1e-9)
  with pytest.raises(ValueError, match="one sample per split"):
    is_lib.inception_score(uniform[:3], splits=10)


def test_compute_inception_score_runs(tmp_path):
  weights, mean_path, _ = _write_chainer_npz(tmp_path)
  module, variables, mean = c3d.load_c3d(weights, mean_path)
  videos = np.random.default_rng(2).uniform(-1, 1, (10, 16, 32, 32, 3)).astype(np.float32)
  probs = is_lib.c3d_probs(videos, module, variables, mean, batch_size=5)
  assert probs.shape == (10, 101) and probs.dtype == np.float64
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
  mean_is, std_is = is_lib.compute_inception_score(videos, module, variables, mean, splits=2, batch_size=5)
  assert 1.0 <= mean_is <= 101.0 and std_is >= 0.0
  assert mean_is == pytest.approx(is_lib.inception_score(probs, splits=2)[0], rel=1e-6)
