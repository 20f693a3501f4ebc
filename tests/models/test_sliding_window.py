"""Prefix (teacher-forced) sampling and sliding-window sampling of videos longer than the prior's clip."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.models.test_gpt import tiny_gpt
from videogpt_jax.models import conditioning, sampling, sliding_window


def _framecond_gpt():
  """A tiny frame-conditional prior over a (4, 2, 2) grid (16 tokens), with its conditioning frames."""
  module, variables = tiny_gpt(shape=(4, 2, 2), n_cond_frames=1, frame_shape=(8, 8), cond_width=8,
                               cond_blocks=(1, 1, 1, 1))
  frames = jax.random.uniform(jax.random.PRNGKey(3), (3, 1, 8, 8, 3), minval=-0.5, maxval=0.5)
  return module, variables, frames


def test_prefix_from_a_sample_reproduces_that_sample():
  module, variables, frames = _framecond_gpt()
  key = jax.random.PRNGKey(0)
  full = np.asarray(sampling.sample(module, variables, key, 3, cond_frames=frames)).reshape(3, -1)
  for p in (5, 8):  # not only whole latent frames
    again = sampling.sample(module, variables, key, 3, cond_frames=frames, prefix=full[:, :p])
    np.testing.assert_array_equal(np.asarray(again).reshape(3, -1), full)


def test_prefix_is_copied_and_conditions_the_rest():
  module, variables, frames = _framecond_gpt()
  key = jax.random.PRNGKey(0)
  free = np.asarray(sampling.sample(module, variables, key, 3, cond_frames=frames)).reshape(3, -1)
  prefix = (free[:, :8] + 1) % module.n_codes  # differs from what the prior would draw there
  forced = np.asarray(sampling.sample(module, variables, key, 3, cond_frames=frames, prefix=prefix)).reshape(3, -1)
  np.testing.assert_array_equal(forced[:, :8], prefix)
  # The same noise after a different prefix: the continuation must see it.
  assert (forced[:, 8:] != free[:, 8:]).any()


def test_prefix_shape_is_checked():
  module, variables, frames = _framecond_gpt()
  with pytest.raises(ValueError, match="prefix must be"):
    sampling.sample(module, variables, jax.random.PRNGKey(0), 3, cond_frames=frames,
                    prefix=np.zeros((3, module.seq_len + 1), np.int32))


@pytest.mark.parametrize("overlap", [1, 2])
def test_sliding_window_first_window_is_ordinary_sampling_and_joins_are_seamless(overlap):
  module, variables, frames = _framecond_gpt()
  t = module.shape[0]
  key = jax.random.PRNGKey(7)
  long = np.asarray(sliding_window.sample_long(module, variables, key, 3, 2 * t + 1, overlap=overlap,
                                               cond=conditioning.make_cond(frames)))
  assert long.shape == (3, 2 * t + 1, *module.shape[1:]) and long.dtype == np.int32
  np.testing.assert_array_equal(long[:, :t], sampling.sample(module, variables, key, 3, cond_frames=frames))
  # Window w starts at latent frame w * (t - overlap): its first `overlap` frames are the frames generated before
  # it, copied; the rest is what the prior draws given them (and the same conditioning frames).
  stride = t - overlap
  for w in range(1, sliding_window.num_windows(t, 2 * t + 1, overlap)):
    start = w * stride
    prefix = long[:, start:start + overlap].reshape(3, -1)
    window = np.asarray(sampling.sample(module, variables, jax.random.fold_in(key, w), 3, cond_frames=frames,
                                        prefix=prefix))
    np.testing.assert_array_equal(window[:, :overlap], long[:, start:start + overlap])
    end = min(start + t, long.shape[1])
    np.testing.assert_array_equal(window[:, overlap:end - start], long[:, start + overlap:end])


def test_sliding_window_short_request_and_bad_overlap():
  module, variables, frames = _framecond_gpt()
  key = jax.random.PRNGKey(1)
  short = sliding_window.sample_long(module, variables, key, 3, 2, cond=conditioning.make_cond(frames))
  np.testing.assert_array_equal(short, np.asarray(sampling.sample(module, variables, key, 3,
                                                                  cond_frames=frames))[:, :2])
  with pytest.raises(ValueError, match="overlap"):
    sliding_window.sample_long(module, variables, key, 3, 8, overlap=4, cond=conditioning.make_cond(frames))
  assert sliding_window.num_windows(4, 8, 2) == 3 and sliding_window.num_windows(4, 4, 2) == 1
