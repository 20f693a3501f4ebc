"""Access to the original implementation's reference outputs in `../shared/fixtures` (read-only).

A missing fixture is a test failure, never a skip: parity is the proof that we reproduce the original.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np
import pytest

_DEFAULT = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


def fixtures_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("VIDEOGPT_FIXTURES", _DEFAULT))


def load(name: str):
  """Returns `(arrays, manifest_entry)` for fixture `name`; fails the test loudly if it is missing."""
  path = fixtures_dir() / name
  manifest = fixtures_dir() / "manifest.json"
  if not path.exists() or not manifest.exists():
    pytest.fail(f"reference fixture {path} (or its manifest.json) is missing; set VIDEOGPT_FIXTURES to the "
                "folder holding the original implementation's outputs", pytrace=False)
  with open(manifest) as f:
    meta = json.load(f)["files"][name]
  return np.load(path), meta


def state_dict(z, prefix: str = "") -> dict[str, np.ndarray]:
  """The original's state dict stored in a fixture (`sd/<key>`, and ternary `sdq/<key>` x `sdq_scale/<key>`)."""
  sd = {}
  for k in z.files:
    if k.startswith("sd/"):
      sd[prefix + k[3:]] = z[k]
    elif k.startswith("sdq/"):
      sd[prefix + k[4:]] = z[k].astype(np.float32) * z["sdq_scale/" + k[4:]]
  return sd


def original_gpt(variant: str) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
  """`(arrays, state_dict, args)` of the original prior in `gpt_small_<variant>.npz`, with the VQ-VAE weights of
  `vqvae_small.npz` under `vqvae.` (as in the original's checkpoints) and the VQ-VAE's args as defaults."""
  z, meta = load(f"gpt_small_{variant}.npz")
  args = dict(meta["hparams"]["args"])
  for k, v in meta["hparams"]["vqvae_args"].items():
    args.setdefault(k, v)
  sd = state_dict(z)
  vq, _ = load("vqvae_small.npz")
  sd.update(state_dict(vq, prefix="vqvae."))
  return z, sd, args


def nthwc(x: np.ndarray) -> np.ndarray:
  """NCTHW -> NTHWC."""
  return np.transpose(x, (0, 2, 3, 4, 1))


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
