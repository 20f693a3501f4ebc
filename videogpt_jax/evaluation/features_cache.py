"""A small on-disk cache of evaluation features (e.g. I3D logits of the real test clips), one `.npz` per key.

The key is a SHA-256 of a JSON description of everything that determines the features (dataset, split, number of
clips, trial, resolution, the weights used), so a change to any of them computes fresh features.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Callable, Mapping

import numpy as np


def cache_key(parts: Mapping[str, Any]) -> str:
  """Stable hex digest of `parts` (JSON-serialisable values; keys sorted)."""
  try:
    blob = json.dumps(dict(parts), sort_keys=True, default=str)
  except TypeError as e:
    raise ValueError(f"cache key parts must be JSON-serialisable: {e}") from None
  return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_path(cache_dir: str | os.PathLike, parts: Mapping[str, Any]) -> str:
  return os.path.join(os.fspath(cache_dir), f"features_{cache_key(parts)}.npz")


def load(cache_dir: str | os.PathLike, parts: Mapping[str, Any]) -> np.ndarray | None:
  """Cached features for `parts`, or None when absent."""
  path = cache_path(cache_dir, parts)
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as z:
    return z["features"]


def save(cache_dir: str | os.PathLike, parts: Mapping[str, Any], features: np.ndarray) -> str:
  """Writes features atomically (temp file + rename) with the key description beside them; returns the path."""
  os.makedirs(cache_dir, exist_ok=True)
  path = cache_path(cache_dir, parts)
  fd, tmp = tempfile.mkstemp(dir=os.fspath(cache_dir), suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, features=np.asarray(features), key=json.dumps(dict(parts), sort_keys=True, default=str))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def cached(cache_dir: str | os.PathLike | None, parts: Mapping[str, Any],
           compute: Callable[[], np.ndarray]) -> np.ndarray:
  """Returns cached features for `parts`, computing and storing them on a miss (no caching if `cache_dir` is None)."""
  if cache_dir is None:
    return np.asarray(compute())
  feats = load(cache_dir, parts)
  if feats is None:
    feats = np.asarray(compute())
    save(cache_dir, parts, feats)
  return feats
