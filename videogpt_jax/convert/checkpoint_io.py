"""Reads the original VideoGPT's checkpoint files without executing pickled code.

Two formats: PyTorch Lightning `.ckpt` (`{"state_dict": ..., "hyper_parameters": {"args": argparse.Namespace}}`,
as the released checkpoints are) and plain `torch.save(state_dict)` files. Loading goes through
`torch.load(weights_only=True)` with only `argparse.Namespace` allowed beyond tensors and containers, so a file
that would run arbitrary code when unpickled is refused. torch is an optional dependency (`pip install .[torch]`).
"""
from __future__ import annotations

import argparse
import pathlib
from typing import Any

import numpy as np

KINDS = ("vqvae", "gpt")


class UnsafeCheckpointError(ValueError):
  """The file's pickle references globals outside the allow-list (it could run code when loaded)."""


def _torch():
  try:
    import torch  # noqa: PLC0415 (optional dependency, imported only when reading original files)
  except ImportError as e:
    raise ImportError("reading original PyTorch checkpoints needs torch: pip install 'videogpt_jax[torch]' "
                      "(or `pip install torch`)") from e
  return torch


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
    FileNotFoundError, UnsafeCheckpointError, ValueError (not a state dict / checkpoint).
  """
  if kind is not None and kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint file {path} does not exist")
  torch = _torch()
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises pickle.UnpicklingError with its own explanation.
    if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
      first = str(e).strip().splitlines()
      detail = next((line for line in first if "Unsupported global" in line or "GLOBAL" in line), first[0])
      detail = detail.split(" Please use")[0]  # torch's advice to allow-list the global is not ours to give.
      raise UnsafeCheckpointError(
          f"refusing to load {path}: its pickle references a global outside the allow-list (argparse.Namespace, "
          f"tensors, containers), so loading it could execute arbitrary code. {detail.strip()}") from e
    raise ValueError(f"cannot read {path} as a PyTorch checkpoint: {type(e).__name__}: {e}") from e
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state dict or a Lightning checkpoint")
  if "state_dict" in obj and isinstance(obj["state_dict"], dict):
    raw, hparams = obj["state_dict"], _hparams(obj)
  else:
    raw, hparams = obj, {}
  bad = [k for k, v in raw.items() if not hasattr(v, "shape")]
  if bad:
    raise ValueError(f"{path}: entries {bad[:5]} are not tensors; not a state dict")
  return _strip({k: _to_numpy(v) for k, v in raw.items()}, kind), hparams
