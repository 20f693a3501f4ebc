"""GIF/MP4 writing of comparison grids: written files decode back to the frames that were given."""
import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogpt_jax import visualize


def test_to_uint8_clips_like_the_original_sampler():
  np.testing.assert_array_equal(visualize.to_uint8(np.array([-1.0, -0.5, 0.0, 0.5, 2.0])), [0, 0, 128, 255, 255])


@pytest.mark.parametrize("truncate", [False, True])
def test_to_uint8_is_one_conversion_for_numpy_and_jax(truncate):
  x = np.linspace(-0.7, 0.7, 101, dtype=np.float32)
  want = visualize.to_uint8(x, truncate=truncate)
  assert isinstance(want, np.ndarray) and want.dtype == np.uint8
  assert want[50] == (127 if truncate else 128)  # 0.0 -> 127.5: truncated (the original's FVD) or rounded
  eager = visualize.to_uint8(jnp.asarray(x), truncate=truncate)
  traced = jax.jit(lambda v: visualize.to_uint8(v, truncate=truncate))(jnp.asarray(x))
  for got in (eager, traced):
    assert isinstance(got, jax.Array) and got.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(got), want)


def test_comparison_grid_places_each_clip():
  rows = [np.full((3, 2, 4, 5, 3), 10 * (r + 1), np.uint8) for r in range(2)]
  rows[1][2] = 99
  grid = visualize.comparison_grid(rows, pad=1)
  assert grid.shape == (2, 2 * 5 - 1, 3 * 6 - 1, 3)
  assert (grid[:, :4, :5] == 10).all() and (grid[:, 5:, 12:] == 99).all() and (grid[:, 4] == 255).all()
  with pytest.raises(ValueError, match="one shape"):
    visualize.comparison_grid([rows[0], rows[0][:2]])


def test_gif_round_trip(tmp_path):
  frames = np.zeros((4, 8, 10, 3), np.uint8)
  for t in range(4):
    frames[t, :, t * 2:t * 2 + 2] = 255
  path = visualize.write_gif(tmp_path / "x.gif", frames)
  back = iio.imread(path, index=None)
  assert back.shape[0] == 4
  np.testing.assert_array_equal(back[..., :3], frames)


def test_mp4_is_decodable(tmp_path):
  rng = np.random.default_rng(0)
  frames = np.repeat(rng.integers(0, 255, (1, 16, 16, 3), np.uint8), 5, axis=0)
  path = visualize.write_mp4(tmp_path / "x.mp4", frames)
  import imageio_ffmpeg
  reader = imageio_ffmpeg.read_frames(str(path))
  meta = next(reader)
  assert tuple(meta["size"]) == (16, 16)
  assert sum(1 for _ in reader) == 5
