"""Checks of a training config and of the paths a command was given, in plain Python, before JAX or TensorFlow
start: each problem is one `ConfigError` whose message names the flag (`--config.batch_size=0: ...`) or file.

What needs devices (a mesh that divides the batch) or data (a dataset that exists) is checked where those are
built; everything a config alone can say is wrong is said here.
"""
from __future__ import annotations

import math
import os
from typing import Any

_DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """A config field or command-line path that cannot work; the message starts with the flag."""


def _get(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    if node is None or part not in node:
      return None
    node = node[part]
  return node


def _fail(field: str, value: Any, why: str) -> None:
  raise ConfigError(f"--config.{field}={value}: {why}")


def _int(config: Any, field: str, minimum: int, *, required: bool = True) -> None:
  value = _get(config, field)
  if value is None:
    if required:
      raise ConfigError(f"--config.{field} is missing from the config")
    return
  if isinstance(value, bool) or not isinstance(value, int):
    _fail(field, value, f"must be an integer, got {type(value).__name__}")
  if value < minimum:
    _fail(field, value, "must be a positive integer" if minimum == 1 else f"must be >= {minimum}")


def _number(config: Any, field: str, minimum: float) -> None:
  value = _get(config, field)
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    _fail(field, value, "must be a finite number")
  if value < minimum:
    _fail(field, value, f"must be >= {minimum:g}")


def _choice(config: Any, field: str, allowed: tuple) -> None:
  value = _get(config, field)
  if value is not None and value not in allowed:
    shown = ", ".join(repr(a) for a in allowed if a not in ("", None))
    _fail(field, value, f"must be one of {shown}")


def check_mesh(config: Any) -> None:
  mesh = _get(config, "mesh")
  if mesh is None:
    return
  ok = isinstance(mesh, (tuple, list)) and len(mesh) == 3 and all(
      isinstance(m, int) and not isinstance(m, bool) and (m >= 1 or m == -1) for m in mesh)
  if not ok or sum(m == -1 for m in mesh) > 1:
    _fail("mesh", tuple(mesh) if isinstance(mesh, list) else mesh,
          "must be 3 integers (data, fsdp, model), each >= 1 or one of them -1 (the remaining devices)")


def check_data_paths(config: Any) -> None:
  """`config.data.data_dir` / `manual_dir` may not exist yet (the build makes them), but may not be files."""
  for field in ("data.data_dir", "data.manual_dir"):
    path = _get(config, field)
    if path:
      check_directory_flag(f"--config.{field}", path, must_exist=False)


# Fields an older config may still set: where they live now.
_MOVED = {"sample_every": "eval_options.samples.every", "num_samples": "eval_options.samples.num_samples"}


def check_moved_fields(config: Any) -> None:
  """A field of an older config that has moved is an error naming its new place (it would be silently ignored)."""
  for old, new in _MOVED.items():
    if _get(config, old) is not None:
      raise ConfigError(f"--config.{old} has moved to --config.{new} (samples are the `samples` evaluator of "
                        "config.evals); set that instead")


def moved_field_hint(overrides: list[str]) -> str:
  """For `--config.<field>=...` overrides of fields that have moved: `" (--config.old has moved to ...)"`, else ""."""
  moved = [f"--config.{old} has moved to --config.{new}" for old, new in _MOVED.items()
           if any(o.startswith(f"--config.{old}=") or o == f"--config.{old}" for o in overrides)]
  return f" ({'; '.join(moved)})" if moved else ""


def check_train_config(config: Any, stage: str) -> None:
  """Raises `ConfigError` for the first field of `config` that cannot train `stage` ("vqvae" or "gpt")."""
  for field in ("batch_size", "total_steps", "log_every"):
    _int(config, field, 1)
  for field in ("checkpoint_every", "eval_every", "warmup_steps", "eval_batches", "eval_batch_size"):
    _int(config, field, 0, required=False)
  _int(config, "keep_checkpoints", 1, required=False)
  _int(config, "seed", 0, required=False)
  _int(config, "data.seq_len", 1, required=False)
  _int(config, "data.resolution", 1, required=False)
  _number(config, "lr", 0.0)
  _number(config, "grad_clip", 0.0)
  for field in ("adam_b1", "adam_b2"):
    _number(config, field, 0.0)
    value = _get(config, field)
    if value is not None and value >= 1:
      _fail(field, value, "must be below 1")
  warmup, total = _get(config, "warmup_steps"), _get(config, "total_steps")
  if warmup and warmup >= total:
    _fail("warmup_steps", warmup, f"must be smaller than config.total_steps={total}")
  _choice(config, "lr_schedule", ("cosine", "constant"))
  _choice(config, "compute_dtype", _DTYPES)
  _choice(config, "model.remat", (True, False))  # per block: the one remat knob
  _choice(config, "platform", ("", "cpu", "gpu", "tpu"))  # models.platforms.PLATFORMS, without importing JAX
  _choice(config, "best_mode", ("min", "max"))
  check_mesh(config)
  num_devices = _get(config, "num_devices")
  if num_devices is not None and (not isinstance(num_devices, int) or (num_devices < 1 and num_devices != -1)):
    _fail("num_devices", num_devices, "must be a positive integer or -1 (all devices)")
  check_data_paths(config)
  if stage == "gpt":
    check_moved_fields(config)
    _int(config, "eval_options.samples.every", 0, required=False)
    _int(config, "eval_options.samples.num_samples", 1, required=False)
    vqvae_workdir = _get(config, "vqvae_workdir")
    if not vqvae_workdir:
      raise ConfigError("--config.vqvae_workdir is required: the workdir of a trained VQ-VAE (train_vqvae.py)")
    check_directory_flag("--config.vqvae_workdir", vqvae_workdir, must_exist=True)
    codes_path = _get(config, "codes_path")
    if codes_path and not os.path.exists(codes_path):
      _fail("codes_path", codes_path, "no such file (write it with videogpt_jax.train.encode_dataset)")
  elif stage != "vqvae":
    raise ValueError(f"stage must be 'vqvae' or 'gpt', got {stage!r}")


def check_directory_flag(flag: str, path: str | os.PathLike, *, must_exist: bool) -> None:
  """A folder argument: an existing file (or a file where a parent folder should be) is an error."""
  path = os.path.expanduser(os.fspath(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"{flag}={path}: is a file, not a folder")
  if must_exist and not os.path.isdir(path):
    raise ConfigError(f"{flag}={path}: no such folder")
  parent = os.path.dirname(os.path.abspath(path))
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise ConfigError(f"{flag}={path}: {parent} is a file, not a folder")
  if not os.path.exists(path) and parent and not os.access(parent, os.W_OK):
    raise ConfigError(f"{flag}={path}: cannot create it ({parent} is not writable)")


def check_file_flag(flag: str, path: str | os.PathLike) -> None:
  path = os.path.expanduser(os.fspath(path))
  if os.path.isdir(path):
    raise ConfigError(f"{flag}={path}: is a folder, not a file")
  if not os.path.isfile(path):
    raise ConfigError(f"{flag}={path}: no such file")
