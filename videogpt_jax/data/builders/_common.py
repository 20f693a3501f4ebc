"""Pieces shared by the local TFDS builders: manual-dir checks and the skipped-input log."""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from absl import logging

T = TypeVar("T")


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
