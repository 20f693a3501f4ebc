"""A video whose decode ends early (a truncated faststart MP4) is skipped by default, or kept with
`keep_partial=True`; either way `skipped_inputs.json` lists it."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from videogpt_jax.data import builders, video_io
from videogpt_jax.data.builders import _common


def _faststart_mp4(path, n_frames=60, size=32):
  """An H.264 MP4 with its index first (`+faststart`): cut short, its first frames still decode."""
  frames = np.random.default_rng(0).integers(0, 256, (n_frames, size, size, 3), dtype=np.uint8)
  subprocess.run([video_io.ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                  "-s", f"{size}x{size}", "-r", "25", "-i", "-", "-c:v", "libx264", "-preset", "ultrafast",
                  "-crf", "10", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)],
                 input=frames.tobytes(), check=True)
  return path


@pytest.fixture
def clips(tmp_path):
  root = tmp_path / "manual"
  (root / "a").mkdir(parents=True)
  whole = _faststart_mp4(root / "a" / "whole.mp4")
  data = whole.read_bytes()
  (root / "a" / "cut.mp4").write_bytes(data[: len(data) // 2])
  return root


def test_decode_video_says_when_it_ended_early(clips):
  frames, problem = video_io.decode_video(clips / "a" / "whole.mp4")
  assert frames.shape == (60, 32, 32, 3) and problem is None
  frames, problem = video_io.decode_video(clips / "a" / "cut.mp4")
  assert 0 < len(frames) < 60 and problem
  with pytest.raises(video_io.PartialDecodeError, match=f"decoding ended early after {len(frames)} frames"):
    video_io.read_video(clips / "a" / "cut.mp4")
  assert len(video_io.read_video(clips / "a" / "cut.mp4", allow_partial=True)) == len(frames)
  assert len(video_io.read_video(clips / "a" / "whole.mp4", max_frames=10)) == 10  # a limit is no early end


@pytest.mark.parametrize("keep_partial", [False, True])
def test_video_folder_skips_or_keeps_and_lists_partial_clips(clips, tmp_path, keep_partial):
  config = builders.VideoFolderConfig(name=f"res16_keep{keep_partial}", resolution=16, min_frames=4,
                                     keep_partial=keep_partial)
  builder = builders.load_builder("video_folder", tmp_path / f"tfds{keep_partial}", manual_dir=clips,
                                  config=config)
  listed = dict(builders.read_skipped(builder))
  cut = str(clips / "a" / "cut.mp4")
  assert list(listed) == [cut]
  n = builder.info.splits["train"].num_examples
  if keep_partial:
    assert n == 2 and listed[cut].startswith(_common.PARTIAL_KEPT)
  else:
    assert n == 1 and listed[cut].startswith("partial decode: ended after") and "keep_partial=True" in listed[cut]
