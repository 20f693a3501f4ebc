"""Preprocessing ops: each one eagerly and inside tf.data (same result), plus the spec parser."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from videogpt_jax.data import preprocess_ops as ops


def _clip(t=20, h=60, w=80, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (t, h, w, c), dtype=np.uint8)


def _both(spec, data):
  """Runs `spec` eagerly and inside `tf.data.Dataset.map`; asserts they agree and returns the result."""
  fn = ops.get_preprocess_fn(spec)
  eager = {k: v.numpy() for k, v in fn({k: tf.constant(v) for k, v in data.items()}).items()}
  ds = tf.data.Dataset.from_tensors(data).map(fn)
  graph = next(iter(ds.as_numpy_iterator()))
  assert set(eager) == set(graph)
  for k in eager:
    np.testing.assert_array_equal(eager[k], graph[k])
  return eager


def test_random_window_is_consecutive_and_seeded():
  video = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
  starts = set()
  for i in range(30):
    out = _both("random_window(16)", {"video": video, "_seed": np.array([7, i], np.int64)})["video"]
    start = int(out[0, 0, 0, 0])
    np.testing.assert_array_equal(out[:, 0, 0, 0], np.arange(start, start + 16))
    starts.add(start)
  assert starts <= set(range(5)) and len(starts) > 1
  a = _both("random_window(16)", {"video": video, "_seed": np.array([7, 3], np.int64)})
  b = _both("random_window(16)", {"video": video, "_seed": np.array([7, 3], np.int64)})
  np.testing.assert_array_equal(a["video"], b["video"])


def test_random_ops_need_a_seed():
  with pytest.raises(KeyError, match="_seed"):
    ops.get_preprocess_fn("random_window(4)")({"video": tf.zeros((8, 2, 2, 3), tf.uint8)})


def test_window_shorter_than_length_fails_loudly():
  with pytest.raises(tf.errors.InvalidArgumentError, match="shorter than"):
    ops.get_preprocess_fn("fixed_window(16)")({"video": tf.zeros((8, 2, 2, 3), tf.uint8)})


def test_fixed_and_center_window():
  video = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  assert _both("fixed_window(4, start=3)", {"video": video})["video"][:, 0, 0, 0].tolist() == [3, 4, 5, 6]
  assert _both("center_window(16)", {"video": video})["video"][:, 0, 0, 0].tolist() == list(range(2, 18))


def test_decode_video_png_frames():
  clip = _clip(t=3, h=8, w=6)
  encoded = np.array([tf.io.encode_png(f).numpy() for f in clip], dtype=object)
  out = _both("decode_video", {"video": encoded})["video"]
  np.testing.assert_array_equal(out, clip)


def test_resize_smaller_and_center_crop():
  clip = _clip()
  out = _both("resize_smaller(30)", {"video": clip})["video"]
  assert out.shape == (20, 30, 40, 3) and out.dtype == np.uint8
  want = tf.image.resize(clip.astype(np.float32), (30, 40), antialias=False).numpy()
  np.testing.assert_allclose(out, np.clip(np.round(want), 0, 255), atol=1)
  out = _both("resize_smaller(30)|center_crop(30)", {"video": clip})["video"]
  assert out.shape == (20, 30, 30, 3)
  np.testing.assert_array_equal(out, _both("resize_smaller(30)", {"video": clip})["video"][:, :, 5:35])
  tall = _clip(h=80, w=60)
  assert _both("resize_smaller(30)", {"video": tall})["video"].shape == (20, 40, 30, 3)


def test_random_crop_and_flip():
  clip = _clip(h=10, w=12)
  seed = np.array([1, 2], np.int64)
  out = _both("random_crop(8)", {"video": clip, "_seed": seed})["video"]
  assert out.shape == (20, 8, 8, 3)
  found = [(i, j) for i in range(3) for j in range(5) if np.array_equal(clip[:, i:i + 8, j:j + 8], out)]
  assert len(found) == 1  # The same crop in every frame.
  np.testing.assert_array_equal(_both("flip_lr(1.0)", {"video": clip, "_seed": seed})["video"], clip[:, :, ::-1])
  np.testing.assert_array_equal(_both("flip_lr(0.0)", {"video": clip, "_seed": seed})["video"], clip)


def test_gray_to_rgb_value_range_cond_frames_keep():
  gray = _clip(c=1, h=4, w=4)
  out = _both("gray_to_rgb|value_range(-0.5,0.5)|cond_frames(2)|keep('video','cond_frames')",
              {"video": gray, "label": np.int32(3)})
  assert set(out) == {"video", "cond_frames"}
  assert out["video"].dtype == np.float32 and out["video"].shape == (20, 4, 4, 3)
  np.testing.assert_allclose(out["video"][..., 1], gray[..., 0] / 255.0 - 0.5, atol=1e-6)
  np.testing.assert_array_equal(out["cond_frames"], out["video"][:2])
  ends = _both("value_range(-1,1)", {"video": np.array([0, 255], np.uint8)})["video"]
  np.testing.assert_allclose(ends, [-1.0, 1.0])


@pytest.mark.parametrize("spec", ["nope(1)", "resize_smaller(size=)", "center_crop(os.system('x'))", "a.b(1)"])
def test_bad_specs(spec):
  with pytest.raises(ValueError):
    ops.get_preprocess_fn(spec)
