"""Pieces shared by the local TFDS builders: manual-dir checks and the skipped-input log."""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from absl import logging

T = TypeVar("T")
PARTIAL_KEPT = "partial decode, kept the first"


class ManualDataError(FileNotFoundError):
  """The manual directory or a file the builder needs from it is missing."""


def manual_path(dl_manager, dataset: str, instructions: str) -> str:
  """Returns the manual directory of `dl_manager`, or raises one clear error naming what to put where."""
  try:
    path = dl_manager.manual_dir
  except AssertionError:  # TFDS's own "does not exist or is empty" check.
    path = None
  if path is None or not os.path.isdir(os.fspath(path)):
    raise ManualDataError(
        f"{dataset}: the manual directory {os.fspath(getattr(dl_manager, '_manual_dir', None) or '')!r} "
        f"is missing or empty. {instructions.strip()}")
  return os.fspath(path)


class SkipLog:
  """Records inputs a builder skipped (corrupt, truncated, too short, wrongly sized), with a warning each.

  A builder owns one; `download_and_prepare` callers read `builder.skipped` (a list of `(source, reason)`) or
  `builder.skipped_count` to report it at the end of a build.
  """

  def __init__(self):
    self.entries: list[tuple[str, str]] = []

  def skip(self, source: str, reason: str) -> None:
    self.entries.append((str(source), reason))
    logging.warning("Skipping %s: %s", source, reason)

  def kept_partial(self, source: str, n_frames: int, problem: str) -> None:
    """A clip whose decode ended early, kept (`keep_partial=True`): listed too, so nobody mistakes it for whole."""
    self.entries.append((str(source), f"{PARTIAL_KEPT} {n_frames} frames ({problem})"))
    logging.warning("Keeping the %d frames decoded from %s before: %s", n_frames, source, problem)

  def __len__(self) -> int:
    return len(self.entries)


class SkipLogMixin:
  """Gives a builder a lazily created `SkipLog` and `skipped` / `skipped_count` accessors."""

  @property
  def skip_log(self) -> SkipLog:
    if not hasattr(self, "_skip_log"):
      self._skip_log = SkipLog()  # pylint: disable=attribute-defined-outside-init
    return self._skip_log

  @property
  def skipped(self) -> list[tuple[str, str]]:
    return list(self.skip_log.entries)

  @property
  def skipped_count(self) -> int:
    return len(self.skip_log)


def usable_frames(log: SkipLog, source: str, decoded, min_frames: int, keep_partial: bool):
  """The frames of one `video_io.decode_video` result (or the exception it raised), or None after logging why
  the clip is skipped. A decode that ended early is skipped unless `keep_partial`; kept, it is listed as partial."""
  if isinstance(decoded, Exception):
    log.skip(source, f"undecodable: {decoded}")
    return None
  frames, problem = decoded
  if problem is not None and not keep_partial:
    log.skip(source, f"partial decode: ended after {len(frames)} frames ({problem}); keep_partial=True keeps such "
                     "clips")
    return None
  if len(frames) < min_frames:
    log.skip(source, f"only {len(frames)} frames, fewer than min_frames={min_frames}")
    return None
  if problem is not None:
    log.kept_partial(source, len(frames), problem)
  return frames


def decode_in_order(paths: Sequence[str], decode: Callable[[str], T], workers: int = 0,
                    ) -> Iterator[tuple[str, T | Exception]]:
  """Yields `(path, decode(path))` in input order, or `(path, exception)` when decoding raised.

  Decoding runs on `workers` threads (ffmpeg subprocesses release the GIL; 0 means `os.cpu_count()`), with at
  most `4 * workers` results held at once so memory stays bounded on 13k-clip datasets.
  """
  workers = workers or os.cpu_count() or 1

  def safe(path):
    try:
      return decode(path)
    except Exception as e:  # pylint: disable=broad-except
      return e

  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    pending = collections.deque()
    for path in paths:
      pending.append((path, pool.submit(safe, path)))
      if len(pending) >= 4 * workers:
        path0, future = pending.popleft()
        yield path0, future.result()
    while pending:
      path0, future = pending.popleft()
      yield path0, future.result()
