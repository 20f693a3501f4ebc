"""C3D (Tran et al. 2015) fine-tuned on UCF-101: the classifier of the TGAN-v2 Inception Score protocol.

VideoGPT's UCF-101 Inception Score (paper: 24.69 +- 0.30) follows TGAN-v2 (Saito et al. 2020, pfnet-research/tgan2),
whose `C3DVersion1UCF101` is a chainer model. Its quirks, kept here:
- input: 16 RGB frames in [-1, 1] (any size) -> RGB->BGR and x128 (a fixed 1x1x1 "pre" conv) -> bilinear resize of
  every frame to 112 x 112 with chainer's `F.resize_images` (align_corners=True) -> `+ (128 - mean)`, where `mean`
  is `mean2.npz['mean']` `(3, 16, 128, 128)` (BGR, 0..255) centre-cropped to `[:, :, 8:120, 8:120]`. So the network
  sees roughly BGR pixels in 0..255 minus the Sports-1M/UCF mean clip;
- conv 3x3x3 stride 1 pad 1 (+bias, ReLU): conv1a 64, pool1 (1,2,2), conv2a 128, pool2, conv3a/b 256, pool3,
  conv4a/b 512, pool4, conv5a/b 512, pool5 (pool2..5: 2x2x2 stride 2), fc6 4096, fc7 4096 (ReLU; dropout is
  inactive at test time), fc8 101;
- chainer's max pooling defaults to `cover_all=True`: the output size is `ceil((n - k) / s) + 1`, so pool5 maps
  the 7 x 7 map to 4 x 4 (the extra window sees only the last row/column), and fc6 takes 512 * 1 * 4 * 4 inputs;
- fc6 flattens the chainer `(C, T, H, W)` layout; activations here are `(B, T, H, W, C)`, so they are transposed
  before flattening and the published fc6 weight is used as is.

Weights (not redistributable here; not available offline): `conv3d_deepnetA_ucf.npz` is the chainer conversion of
the Caffe model `c3d_ucf101_finetune_whole_iter_20000` (http://vlg.cs.dartmouth.edu/c3d/), produced by
`C3DVersion1UCF101.convert_caffemodel_to_npz` in pfnet-research/tgan2 (run it on the Caffe model, or take the
converted file from a TGAN-v2 evaluation setup); keys
`conv1a/W (64, 3, 3, 3, 3)`, `conv1a/b`, ..., `fc6/W (4096, 8192)`, `fc6/b`, ..., `fc8/W (101, 4096)`. `mean2.npz`
(key `mean`, `(3, 16, 128, 128)`) ships with tgan2 (`datasets/models/mean2.npz`). Load both with `load_c3d`.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from videogpt_jax.convert import layouts
from videogpt_jax.evaluation import i3d
from videogpt_jax.evaluation import resize

CONV_NAMES = ("conv1a", "conv2a", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")
FC_NAMES = ("fc6", "fc7", "fc8")
POOL_AFTER = {"conv1a": (1, 2, 2), "conv2a": (2, 2, 2), "conv3b": (2, 2, 2), "conv4b": (2, 2, 2),
              "conv5b": (2, 2, 2)}
N_FRAMES, SIZE, MEAN_CROP = 16, 112, 8


def max_pool_cover_all(x: jax.Array, window: Sequence[int]) -> jax.Array:
  """chainer `max_pooling_nd(x, ksize=window)` (stride = window, no padding, cover_all=True) on `(B, T, H, W, C)`.

  Output size per axis is `ceil((n - k) / k) + 1`; the windows that run past the end see -inf there.
  """
  pads = []
  for n, k in zip(x.shape[1:4], window):
    s = k  # chainer's stride defaults to the window
    out = (n - k + s - 1) // s + 1
    pads.append((0, (out - 1) * s + k - n))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *window, 1), [(0, 0), *pads, (0, 0)])


class C3D(nn.Module):
  """C3D on preprocessed clips (see `preprocess`): `(B, 16, 112, 112, 3)` -> fc8 logits `(B, n_classes)`.

  Attributes:
    conv_features: output channels of conv1a .. conv5b.
    fc_features: widths of fc6 and fc7.
    n_classes: fc8 outputs (101 for UCF-101).
    conv_impl: "auto", "direct" or "taps" (see `i3d.conv3d_same`).
  """
  conv_features: tuple[int, ...] = (64, 128, 256, 256, 512, 512, 512, 512)
  fc_features: tuple[int, int] = (4096, 4096)
  n_classes: int = 101
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"C3D input must be (B, T, H, W, 3), got shape {x.shape}")
    hi = lax.Precision.HIGHEST
    for name, features in zip(CONV_NAMES, self.conv_features):
      x = nn.relu(_Conv(features, self.conv_impl, name=name)(x))
      if name in POOL_AFTER:
        x = max_pool_cover_all(x, POOL_AFTER[name])
    x = einops.rearrange(x, "b t h w c -> b (c t h w)")
    for name, features in zip(FC_NAMES, (*self.fc_features, self.n_classes)):
      x = nn.Dense(features, precision=hi, name=name,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x)
      if name != "fc8":
        x = nn.relu(x)
    return x


class _Conv(nn.Module):
  """3x3x3 convolution, stride 1, symmetric padding 1, with bias."""
  features: int
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), i3d.KERNEL_AXES),
                        (3, 3, 3, x.shape[-1], self.features))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), (self.features,))
    # symmetric padding 1 is TF-"SAME" for k=3, s=1, so I3D's (CPU-friendly) convolution applies
    return i3d.conv3d_same(x, kernel, (1, 1, 1), "highest", self.conv_impl) + bias


def preprocess(videos: jax.Array, mean: jax.Array) -> jax.Array:
  """TGAN-v2 input transform: RGB videos `(B, 16, H, W, 3)` in [-1, 1] -> C3D input `(B, 16, 112, 112, 3)` (BGR).

  Args:
    videos: generated clips in [-1, 1] (TGAN-v2 clips its samples to [-1, 1] first; so does this function).
    mean: `mean2.npz['mean']`, `(3, 16, 128, 128)` BGR, or an already cropped/transposed `(16, 112, 112, 3)`.
  """
  if videos.ndim != 5 or videos.shape[1] != N_FRAMES or videos.shape[-1] != 3:
    raise ValueError(f"C3D videos must be (B, {N_FRAMES}, H, W, 3), got shape {videos.shape}")
  mean = prepare_mean(mean)
  x = jnp.clip(jnp.asarray(videos, jnp.float32), -1.0, 1.0)[..., ::-1] * 128.0
  rows = resize.bilinear_matrix(videos.shape[2], SIZE, align_corners=True)
  cols = resize.bilinear_matrix(videos.shape[3], SIZE, align_corners=True)
  return resize.resize_hw(x, rows, cols) + (128.0 - mean)


def prepare_mean(mean: np.ndarray | jax.Array) -> jax.Array:
  """`(3, 16, 128, 128)` chainer mean clip -> centre crop `(16, 112, 112, 3)`; a `(16, 112, 112, 3)` passes through."""
  mean = jnp.asarray(mean, jnp.float32)
  if mean.shape == (N_FRAMES, SIZE, SIZE, 3):
    return mean
  if mean.ndim != 4 or mean.shape[:2] != (3, N_FRAMES) or min(mean.shape[2:]) < MEAN_CROP + SIZE:
    raise ValueError(f"C3D mean must be (3, {N_FRAMES}, >=120, >=120) as in mean2.npz, got {mean.shape}")
  crop = mean[:, :, MEAN_CROP:MEAN_CROP + SIZE, MEAN_CROP:MEAN_CROP + SIZE]
  return jnp.transpose(crop, (1, 2, 3, 0))


def _find(z: dict, name: str, path: str) -> np.ndarray:
  hits = [k for k in z if k == name or k.endswith("/" + name)]
  if len(hits) != 1:
    raise ValueError(f"C3D weights {path}: expected exactly one entry named {name!r}, found {hits}")
  return z[hits[0]]


def from_chainer_npz(weights: dict[str, np.ndarray], path: str = "<dict>") -> tuple[C3D, dict]:
  """chainer `conv3d_deepnetA_ucf.npz` arrays -> `(C3D module, variables)`; widths are read from the shapes."""
  params, conv_features = {}, []
  for name in CONV_NAMES:
    w = _find(weights, f"{name}/W", path)
    if w.ndim != 5 or w.shape[2:] != (3, 3, 3):
      raise ValueError(f"C3D weights {path}: {name}/W must be (out, in, 3, 3, 3), got {w.shape}")
    params[name] = {"kernel": layouts.conv3d(w), "bias": np.asarray(_find(weights, f"{name}/b", path), np.float32)}
    conv_features.append(w.shape[0])
  fc_features = []
  for name in FC_NAMES:
    w = _find(weights, f"{name}/W", path)
    params[name] = {"kernel": layouts.linear(w), "bias": np.asarray(_find(weights, f"{name}/b", path), np.float32)}
    fc_features.append(w.shape[0])
  expected_fc6_in = conv_features[-1] * 1 * 4 * 4
  if params["fc6"]["kernel"].shape[0] != expected_fc6_in:
    raise ValueError(f"C3D weights {path}: fc6/W takes {params['fc6']['kernel'].shape[0]} inputs, expected "
                     f"{expected_fc6_in} (= conv5b channels x 1 x 4 x 4)")
  module = C3D(tuple(conv_features), tuple(fc_features[:2]), fc_features[2])
  return module, {"params": jax.tree.map(jnp.asarray, params)}


def load_c3d(weights_path: str | os.PathLike, mean_path: str | os.PathLike) -> tuple[C3D, dict, jax.Array]:
  """Loads `conv3d_deepnetA_ucf.npz` and `mean2.npz` -> `(module, variables, mean (16, 112, 112, 3))`."""
  for p, what in ((weights_path, "C3D weights (conv3d_deepnetA_ucf.npz)"), (mean_path, "C3D mean (mean2.npz)")):
    if not os.path.exists(p):
      raise FileNotFoundError(f"{what} not found at {p}; see videogpt_jax/evaluation/c3d.py for where to get it")
  with np.load(weights_path, allow_pickle=False) as z:
    weights = {k: z[k] for k in z.files}
  with np.load(mean_path, allow_pickle=False) as z:
    if "mean" not in z.files:
      raise ValueError(f"C3D mean file {mean_path} has no 'mean' array (keys: {z.files})")
    mean = prepare_mean(z["mean"])
  module, variables = from_chainer_npz(weights, os.fspath(weights_path))
  return module, variables, mean


def output_hw(n: int) -> int:
  """Spatial size after conv5b's cover_all pool for an `n`-pixel input (112 -> 4)."""
  for _ in range(5):
    n = math.ceil((n - 2) / 2) + 1
  return n
