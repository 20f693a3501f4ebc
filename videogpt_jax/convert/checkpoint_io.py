"""Reads the original VideoGPT's checkpoint files without executing pickled code.

Two formats: PyTorch Lightning `.ckpt` (`{"state_dict": ..., "hyper_parameters": {"args": argparse.Namespace}}`,
as the released checkpoints are) and plain `torch.save(state_dict)` files. Loading goes through
`torch.load(weights_only=True)` with only numpy arrays and `argparse.Namespace` allowed beyond tensors and
containers, so a file that would run arbitrary code when unpickled is refused, naming the global it would import. torch is an optional dependency (`pip install .[torch]`).
"""
from __future__ import annotations

import argparse
import pathlib
import re
from typing import Any

import numpy as np

KINDS = ("vqvae", "gpt")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTOCOL = b"\x80"  # pickle protocols 2+ (torch's legacy format) start with PROTO


class WeightsFileError(ValueError):
  """A weights file that cannot be used; the message is one line naming the file and what is wrong."""


class UnsafeCheckpointError(WeightsFileError):
  """The file's pickle references globals outside the allow-list (it could run code when loaded)."""


def _torch():
  try:
    import torch  # noqa: PLC0415 (optional dependency, imported only when reading original files)
  except ImportError as e:
    raise ImportError("reading original PyTorch checkpoints needs torch: pip install 'videogpt_jax[torch]' "
                      "(or `pip install torch`)") from e
  return torch


def _numpy_globals() -> list:
  """What a pickled numpy array needs: the array reconstructor, `ndarray`, `dtype` and the numeric dtype classes.
  None of them runs code; an object array's items are unpickled under the same allow-list."""
  core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # pylint: disable=protected-access
  out = [core._reconstruct, core.scalar, np.ndarray, np.dtype]  # pylint: disable=protected-access
  for name in ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float16",
               "Float32", "Float64", "Complex64", "Complex128", "Byte", "UByte", "Short", "UShort", "Int", "UInt",
               "Long", "ULong", "LongLong", "ULongLong", "LongDouble", "CLongDouble"):
    cls = getattr(getattr(np, "dtypes", None), f"{name}DType", None)
    if cls is not None:
      out.append(cls)
  return out


def check_torch_file(path: str | pathlib.Path) -> bytes:
  """Raises `WeightsFileError` unless `path` starts like a torch.save file (zip or pickle); returns its first bytes.
  Reads 4 bytes and imports nothing, so commands can call it before they start."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise WeightsFileError(f"{path}: no such file")
  with open(path, "rb") as f:
    head = f.read(4)
  if not head:
    raise WeightsFileError(f"{path}: empty file (0 bytes), not a PyTorch checkpoint")
  if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTOCOL)):
    raise WeightsFileError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
  return head


def torch_load(path: str | pathlib.Path, allowed: tuple = ()) -> Any:
  """`torch.load(path, weights_only=True)` with numpy arrays (and `allowed`) permitted beyond tensors and
  containers. Every failure is one `WeightsFileError` line: not a checkpoint, truncated, or refused because
  loading it would import a global (named) outside the allow-list. Never suggests loading unsafely.
  """
  path = pathlib.Path(path)
  head = check_torch_file(path)
  torch = _torch()
  try:
    with torch.serialization.safe_globals([*_numpy_globals(), *allowed]):
      return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch's messages run to a dozen lines and advise the unsafe weights_only=False.
    text = str(e)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named or "Weights only load failed" in text:
      what = named.group(1) if named else "a global outside the allow-list"
      raise UnsafeCheckpointError(
          f"{path}: refused: loading it would import {what}, which is not a tensor, numpy array, container or "
          f"{', '.join(a.__module__ + '.' + a.__qualname__ for a in allowed) or 'allowed type'}") from None
    if head.startswith(_ZIP_MAGIC) or isinstance(e, EOFError):
      raise WeightsFileError(f"{path}: truncated or damaged PyTorch checkpoint ({type(e).__name__}: "
                             f"{text.strip().splitlines()[0][:120] if text.strip() else 'unexpected end of file'})"
                             ) from None
    raise WeightsFileError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                           f"{text.strip().splitlines()[0][:120] if text.strip() else ''})") from None


def _to_numpy(v: Any) -> np.ndarray:
  if hasattr(v, "detach"):
    return v.detach().cpu().numpy()
  return np.asarray(v)


def _hparams(obj: Any) -> dict[str, Any]:
  """Lightning's `hyper_parameters` -> plain dict (the original saves them as `{"args": Namespace}`)."""
  hp = obj.get("hyper_parameters") or obj.get("hparams") or {}
  if isinstance(hp, argparse.Namespace):
    hp = vars(hp)
  hp = dict(hp)
  if isinstance(hp.get("args"), argparse.Namespace):
    hp = {**{k: v for k, v in hp.items() if k != "args"}, **vars(hp["args"])}
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items()}


def _strip(sd: dict[str, np.ndarray], kind: str | None) -> dict[str, np.ndarray]:
  """Drops a wrapper's `model.` prefix; for `kind="vqvae"` of a prior's checkpoint keeps only its `vqvae.` part."""
  if sd and all(k.startswith("model.") for k in sd):
    sd = {k[len("model."):]: v for k, v in sd.items()}
  if kind == "vqvae" and "codebook.embeddings" not in sd and "vqvae.codebook.embeddings" in sd:
    sd = {k[len("vqvae."):]: v for k, v in sd.items() if k.startswith("vqvae.")}
  return sd


def read_checkpoint(path: str | pathlib.Path, kind: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
  """Reads an original `.ckpt` / `.pt` file safely.

  Args:
    path: the file.
    kind: "vqvae" (a prior's checkpoint then yields its embedded VQ-VAE), "gpt", or None (as stored).
  Returns:
    `(state_dict, hparams)`: numpy arrays under the original's keys; the saved hyperparameters (empty for a
    plain state dict).
  Raises:
    FileNotFoundError, UnsafeCheckpointError, WeightsFileError (not a checkpoint / truncated / not a state dict).
  """
  if kind is not None and kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint file {path} does not exist")
  obj = torch_load(path, allowed=(argparse.Namespace,))
  if not isinstance(obj, dict):
    raise WeightsFileError(f"{path}: not our model: it holds a {type(obj).__name__}, not a state dict or a "
                           "Lightning checkpoint")
  if "state_dict" in obj and isinstance(obj["state_dict"], dict):
    raw, hparams = obj["state_dict"], _hparams(obj)
  else:
    raw, hparams = obj, {}
  bad = [k for k, v in raw.items() if not hasattr(v, "shape")]
  if bad:
    raise WeightsFileError(f"{path}: not our model: entries {bad[:5]} are not tensors, so it is not a state dict")
  return _strip({k: _to_numpy(v) for k, v in raw.items()}, kind), hparams
