"""Video file decoding and encoding through the ffmpeg binary of the PyPI package `imageio-ffmpeg`.

`imageio_ffmpeg.get_ffmpeg_exe()` returns a static ffmpeg build that ships inside the wheel, so decoding needs no
system ffmpeg and behaves the same on every host. Frames travel as raw `rgb24`/`gray` bytes over a pipe; resizing
(shorter side, then centre crop) is done by ffmpeg's own scaler so a 320x240 clip never materialises in Python at
full size.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Sequence

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".gif", ".mkv", ".mov")


class VideoDecodeError(RuntimeError):
  """A video file could not be decoded (corrupt, truncated, empty or unreadable)."""


class PartialDecodeError(VideoDecodeError):
  """Decoding ended early (a truncated file, garbage mid-stream): some frames came out, then ffmpeg failed."""


@functools.cache
def ffmpeg_exe() -> str:
  """Path of the ffmpeg binary bundled with `imageio-ffmpeg`."""
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  return imageio_ffmpeg.get_ffmpeg_exe()


_SIZE_RE = re.compile(r"Stream #\S+.*Video: .*?(\d{2,5})x(\d{2,5})")


def probe_size(path: str) -> tuple[int, int]:
  """Returns `(height, width)` of the first video stream of `path`.

  Raises:
    VideoDecodeError: ffmpeg finds no video stream.
  """
  proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", os.fspath(path)],
                        capture_output=True, text=True, check=False)
  match = _SIZE_RE.search(proc.stderr)
  if match is None:
    last = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
    raise VideoDecodeError(f"{path}: no video stream found ({last[0]})")
  return int(match.group(2)), int(match.group(1))


def _resize_filter(resolution: int) -> str:
  # Shorter side to `resolution` (the other side rounded to even, as ffmpeg's scaler wants), then a centre crop.
  r = int(resolution)
  return (f"scale='if(lte(iw,ih),{r},-2)':'if(lte(iw,ih),-2,{r})':flags=bilinear,"
          f"crop={r}:{r}")


def read_video(path: str, *, resolution: int | None = None, max_frames: int | None = None,
               grayscale: bool = False, fps: float | None = None, allow_partial: bool = False) -> np.ndarray:
  """Decodes a video file into frames; a decode that ended early raises `PartialDecodeError` unless
  `allow_partial` (see `decode_video` to keep such frames and know they are partial)."""
  frames, problem = decode_video(path, resolution=resolution, max_frames=max_frames, grayscale=grayscale, fps=fps)
  if problem is not None and not allow_partial:
    raise PartialDecodeError(f"{path}: decoding ended early after {len(frames)} frames ({problem})")
  return frames


def decode_video(path: str, *, resolution: int | None = None, max_frames: int | None = None,
                 grayscale: bool = False, fps: float | None = None) -> tuple[np.ndarray, str | None]:
  """Decodes a video file into frames, and says whether the decode ended early.

  Args:
    path: any container/codec ffmpeg reads (`.mp4`, `.avi`, `.webm`, `.gif`, ...).
    resolution: if given, resize the shorter side to `resolution` and centre-crop to `resolution x resolution`.
    max_frames: decode at most this many frames from the start.
    grayscale: decode to one channel.
    fps: if given, resample the frame rate.

  Returns:
    `(frames, problem)`: `(T, H, W, C)` uint8 with `C = 1` if `grayscale` else 3; `problem` is None for a clean
    decode, else ffmpeg's first error (a truncated file or garbage mid-stream: the frames are those before it).

  Raises:
    VideoDecodeError: the file is missing, corrupt or holds no complete frame.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise VideoDecodeError(f"{path}: no such file")
  if resolution is not None:
    height = width = int(resolution)
  else:
    height, width = probe_size(path)
  channels = 1 if grayscale else 3
  filters = []
  if fps is not None:
    filters.append(f"fps={fps}")
  if resolution is not None:
    filters.append(_resize_filter(resolution))
  cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", "1", "-i", path]
  if filters:
    cmd += ["-vf", ",".join(filters)]
  if max_frames is not None:
    cmd += ["-frames:v", str(int(max_frames))]
  cmd += ["-f", "rawvideo", "-pix_fmt", "gray" if grayscale else "rgb24", "-"]
  proc = subprocess.run(cmd, capture_output=True, check=False)
  frame_bytes = height * width * channels
  n_frames = len(proc.stdout) // frame_bytes
  err = proc.stderr.decode(errors="replace").strip()
  if proc.returncode != 0 and n_frames == 0:
    raise VideoDecodeError(f"{path}: ffmpeg failed (exit {proc.returncode}): {err[-300:]}")
  if n_frames == 0:
    raise VideoDecodeError(f"{path}: no frames decoded {err[-300:]}")
  if len(proc.stdout) % frame_bytes:
    raise VideoDecodeError(f"{path}: decoded {len(proc.stdout)} bytes, not a whole number of "
                           f"{height}x{width}x{channels} frames")
  frames = np.frombuffer(proc.stdout, np.uint8).reshape(n_frames, height, width, channels)
  # At `-loglevel error` a clean decode prints nothing; ffmpeg still exits 0 after a truncated stream.
  problem = None
  if proc.returncode != 0 or err:
    problem = err.splitlines()[0].split("] ", 1)[-1].strip() if err else f"ffmpeg exit {proc.returncode}"
  return frames, problem


def _write(path: str, frames: np.ndarray, fps: float, codec_args: Sequence[str]) -> str:
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3):
    raise ValueError(f"frames must be (T, H, W, 1|3) uint8, got {frames.shape} {frames.dtype}")
  t, h, w, c = frames.shape
  cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo",
         "-pix_fmt", "gray" if c == 1 else "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
         *codec_args, os.fspath(path)]
  proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"ffmpeg could not write {path}: {proc.stderr.decode(errors='replace')[-300:]}")
  return os.fspath(path)


def write_avi(path: str, frames: np.ndarray, fps: float = 25.0) -> str:
  """Writes `(T, H, W, 1|3)` uint8 frames as an Xvid (MPEG-4 part 2) AVI, the UCF-101 format."""
  return _write(path, frames, fps, ["-c:v", "libxvid", "-q:v", "2", "-pix_fmt", "yuv420p"])


def write_mp4(path: str, frames: np.ndarray, fps: float = 25.0) -> str:
  """Writes `(T, H, W, 1|3)` uint8 frames as an H.264 MP4 (even `H`, `W` required by yuv420p)."""
  return _write(path, frames, fps, ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "10",
                                    "-pix_fmt", "yuv420p"])
