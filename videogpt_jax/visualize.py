"""Writing videos for people: comparison grids as GIF or MP4.

Videos here are uint8 `(N, T, H, W, 3)`; float videos in [-0.5, 0.5] go through `to_uint8` first.
"""
from __future__ import annotations

import io
import os
import pathlib
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def to_uint8(video: Any, *, truncate: bool = False) -> Any:
  """`[-0.5, 0.5]` floats -> uint8: clip to [-0.5, 0.5], `(x + 0.5) * 255`, then round to nearest (default) or
  truncate. The one conversion of the package: numpy in, numpy out; a `jax.Array` (or a tracer, inside `jit`) in,
  a `jax.Array` out.

  Rounding is the exact inverse of the data pipeline's `u8 / 255 - 0.5`. Truncation (`truncate=True`) is what the
  original does before FVD and in its sampler (`.astype('uint8')`, an exact 0.0 becomes 127); FVD and the sampler's
  decoder use it so that their numbers and pixels are the original's, on real clips, reconstructions and samples
  alike.
  """
  xp = jnp if isinstance(video, jax.Array) else np
  x = (xp.clip(xp.asarray(video, xp.float32), -0.5, 0.5) + 0.5) * 255.0
  return (x if truncate else xp.round(x)).astype(xp.uint8)


def comparison_grid(rows: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
  """Stacks `rows` (each `(N, T, H, W, 3)` uint8, same shape) into frames `(T, rows*(H+pad)-pad, N*(W+pad)-pad, 3)`.

  Row r, column n shows clip n of `rows[r]`: e.g. real | reconstruction | sample rows over the same clips.
  """
  shapes = {r.shape for r in rows}
  if len(shapes) != 1:
    raise ValueError(f"comparison_grid needs rows of one shape, got {sorted(shapes)}")
  n, t, h, w, c = rows[0].shape
  out = np.full((t, len(rows) * (h + pad) - pad, n * (w + pad) - pad, c), 255, np.uint8)
  for r, row in enumerate(rows):
    for i in range(n):
      out[:, r * (h + pad):r * (h + pad) + h, i * (w + pad):i * (w + pad) + w] = row[i]
  return out


def gif_bytes(frames: np.ndarray, fps: int = 4) -> bytes:
  """`(T, H, W, 3)` uint8 frames as the bytes of a looping animated GIF."""
  from PIL import Image
  images = [Image.fromarray(f) for f in np.asarray(frames, np.uint8)]
  buffer = io.BytesIO()
  images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
  return buffer.getvalue()


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: int = 4) -> pathlib.Path:
  """Writes `(T, H, W, 3)` uint8 frames as a looping GIF, atomically (a temporary file, then rename)."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(gif_bytes(frames, fps))
  os.replace(tmp, path)
  return path


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 4) -> pathlib.Path:
  """Writes `(T, H, W, 3)` uint8 frames as H.264 MP4 with the ffmpeg binary of `imageio-ffmpeg`."""
  import imageio_ffmpeg
  path = pathlib.Path(path)
  frames = np.asarray(frames, np.uint8)
  t, h, w, _ = frames.shape
  # H.264 wants even sizes; pad with white.
  frames = np.pad(frames, [(0, 0), (0, h % 2), (0, w % 2), (0, 0)], constant_values=255)
  tmp = path.with_name(path.name + ".tmp.mp4")
  with warnings.catch_warnings():
    # JAX warns on any fork; this one is immediately followed by exec of the ffmpeg binary, which is safe.
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    writer = imageio_ffmpeg.write_frames(str(tmp), (frames.shape[2], frames.shape[1]), fps=fps, macro_block_size=1,
                                         quality=8, pix_fmt_out="yuv420p")
    writer.send(None)
  for f in frames:
    writer.send(np.ascontiguousarray(f))
  writer.close()
  os.replace(tmp, path)
  return path
