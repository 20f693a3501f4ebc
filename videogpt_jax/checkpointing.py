"""The only file that knows Orbax: save and restore a train state with its config and data-iterator state.

A checkpoint step holds these items:
- `params`, `model_state`: the model's variables (what inference restores, alone);
- `training`: the rest of the train state (`step`, `opt_state`);
  all three written asynchronously by every process for its shards;
- `config`: the run's config as JSON, so a checkpoint alone says how to rebuild its model;
- `data`: the data iterator's position as JSON, so a resumed run reads the same batches it would have read.
A state without `params`/`model_state` fields (e.g. the variables `videogpt_jax.convert` writes) is one `state`
item, which is also how train states were written before; both layouts are read.

Restoring takes an abstract state (`jax.ShapeDtypeStruct`s carrying the *target* shardings), so a checkpoint saved
on one mesh restores onto any other. A checkpoint that does not match the abstract state, or cannot be read,
raises one `CheckpointError` naming the directory and step; nothing in the directory is modified by a failed
restore.

Resuming a run goes through `restore_newest_good`: a damaged step (unreadable files, no metadata, non-finite
arrays, an empty stray step folder) is moved aside to `quarantine/<step>-<reason>` (never deleted) with a warning,
and the next older step is tried. A checkpoint that is readable but does not match the model is not damage: it
raises, and nothing moves. Each save records whether the loop verified the state finite (`good`); retention keeps
the newest good step whatever else it rotates out.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

QUARANTINE = "quarantine"
_GOOD_STEP = "good_step"  # Orbax metric: the step number when the saved state was verified finite, else -1.


VARIABLE_ITEMS = ("params", "model_state")
TRAINING_ITEM = "training"
SINGLE_ITEM = "state"
_ARRAY_ITEMS = (*VARIABLE_ITEMS, TRAINING_ITEM, SINGLE_ITEM)


class CheckpointError(RuntimeError):
  """A checkpoint that is missing, unreadable or incompatible with the model being restored."""


class IncompatibleCheckpointError(CheckpointError):
  """A readable checkpoint whose tree or shapes differ from the model's (a config mismatch, not damage)."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint step that cannot be read; `reason` is a short slug for its quarantine folder name."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


def _brief(e: BaseException, limit: int = 240) -> str:
  """`Type: first line` of an exception: TensorStore errors carry dozens of lines of context nobody can act on."""
  lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  text = lines[0] if lines else ""
  if len(text) > limit:
    text = text[:limit] + " ..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclasses.dataclass
class Restored:
  """What `Checkpointer.restore` returns."""
  step: int
  state: Any
  config: dict
  data_state: dict


def _is_train_state(state: Any) -> bool:
  return all(hasattr(state, f) for f in ("step", "params", "opt_state", "model_state"))


def _items(state: Any) -> dict[str, Any]:
  """The array items `state` is written as (see the module docstring)."""
  if not _is_train_state(state):
    return {SINGLE_ITEM: state}
  return {"params": state.params, "model_state": state.model_state,
          TRAINING_ITEM: {"step": state.step, "opt_state": state.opt_state}}


def _has_leaves(tree: Any) -> bool:
  # Orbax refuses to write an empty tree; an empty item is skipped and restored as the (empty) target itself.
  return bool(_leaves_with_path(tree))


def _to_json(config: Any) -> dict:
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run, plus the best one by `best_metric` when given.

  Args:
    directory: where the step folders live (created on first save).
    max_to_keep: how many of the most recent checkpoints to keep.
    best_metric: name of a metric passed to `save(..., metrics=...)`; the best checkpoint by it is kept as well.
    best_mode: "min" or "max" for `best_metric`.
    async_save: write in a background thread (the train loop continues while the state is written).
    read_only: open an existing run for inference; never writes.
  """

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 3, best_metric: str | None = None,
               best_mode: str = "min", async_save: bool = True, read_only: bool = False):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    self.directory = pathlib.Path(directory).absolute()
    self.best_metric = best_metric
    good_fn = lambda metrics: float(metrics.get(_GOOD_STEP, -1))
    policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep),
                ocp.checkpoint_managers.BestN(get_metric_fn=good_fn, n=1, keep_checkpoints_without_metrics=False)]
    # Orbax writes metrics only when it tracks a best step; without a user metric it tracks the newest good one.
    best_fn, best_mode = good_fn, best_mode if best_metric is not None else "max"
    if best_metric is not None:
      missing = math.inf if best_mode == "min" else -math.inf  # A step saved without the metric is never best.
      best_fn = lambda metrics: float(metrics.get(best_metric, missing))
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=best_mode == "min", n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=best_mode,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, read_only=read_only, create=not read_only)
    self._options = options
    self._moved: list[pathlib.Path] = []  # steps this instance put in quarantine
    try:
      self._manager = self._open()
    except Exception as e:  # A damaged directory is reported once, clearly.
      if read_only or not self._quarantine_unreadable_metadata():
        raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {_brief(e)}") from e
      self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, options=self._options, item_handlers={
        **{name: ocp.StandardCheckpointHandler() for name in _ARRAY_ITEMS},
        "config": ocp.JsonCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})

  def _quarantine_unreadable_metadata(self) -> bool:
    """Moves aside the steps whose step metadata or metrics are not JSON (Orbax cannot list the directory then)."""
    for folder in sorted(self.directory.iterdir()) if self.directory.is_dir() else []:
      if not folder.name.isdigit():
        continue
      for meta in (folder / "_CHECKPOINT_METADATA", folder / "metrics" / "metrics"):
        try:
          if meta.is_file():
            json.loads(meta.read_text())
        except (ValueError, UnicodeDecodeError) as e:
          target = self._move_aside(int(folder.name), "metadata")
          self._moved.append(target)
          logging.warning("checkpoint step %s in %s: unreadable %s (%s); moved it to %s", folder.name,
                          self.directory, meta.relative_to(folder), _brief(e), target)
          break
    return bool(self._moved)

  # --- queries -------------------------------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def best_step(self) -> int | None:
    return self._manager.best_step() if self.best_metric is not None else None

  # --- save ----------------------------------------------------------------------------------------------------
  def save(self, step: int, state: Any, *, config: Any, data_state: Mapping[str, Any] | None = None,
           metrics: Mapping[str, float] | None = None, good: bool = False) -> bool:
    """Starts writing `state` at `step` (asynchronously); returns whether a save was started.

    `good`: the caller verified every array of `state` finite; retention never rotates out the newest good step.
    """
    if step in self._manager.all_steps():
      return False
    arrays = {name: ocp.args.StandardSave(tree) for name, tree in _items(state).items() if _has_leaves(tree)}
    args = ocp.args.Composite(
        **arrays,
        config=ocp.args.JsonSave(_to_json(config)),
        data=ocp.args.JsonSave(dict(data_state or {})))
    clean_metrics = {_GOOD_STEP: float(step) if good else -1.0}
    if metrics is not None and self.best_metric is not None:
      clean_metrics.update({k: float(np.asarray(v)) for k, v in metrics.items()})
    saved = self._manager.save(step, args=args, metrics=clean_metrics, force=True)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  # --- restore -------------------------------------------------------------------------------------------------
  def read_config(self, step: int | None = None) -> dict:
    """The JSON config saved with `step` (default: latest)."""
    step = self._resolve(step)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    except Exception as e:
      raise DamagedCheckpointError(f"cannot read the config of checkpoint step {step} in {self.directory}: "
                                   f"{_brief(e)}", "config") from e
    return dict(out["config"])

  def restore(self, abstract_state: Any, step: int | None = None) -> Restored:
    """Restores `step` (default: latest) onto `abstract_state`'s shapes, dtypes and shardings.

    Args:
      abstract_state: pytree of `jax.ShapeDtypeStruct` with `.sharding` set (the target mesh layout).
      step: which step; None for the latest.
    Raises:
      CheckpointError: no checkpoint, an unreadable one, or one whose arrays do not match `abstract_state`.
    """
    step = self._resolve(step)
    where = f"checkpoint step {step} in {self.directory}"
    if _is_train_state(abstract_state) and SINGLE_ITEM not in self._saved_items(step, where):
      targets = _items(abstract_state)
    else:  # Anything else, and train states written before they were split into items.
      targets = {SINGLE_ITEM: abstract_state}
    out = self._restore_items(targets, step, where)
    state = out[SINGLE_ITEM] if SINGLE_ITEM in targets else abstract_state.replace(
        params=out["params"], model_state=out["model_state"], step=out[TRAINING_ITEM]["step"],
        opt_state=out[TRAINING_ITEM]["opt_state"])
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return Restored(step=step, state=state, config=dict(out["config"]), data_state=dict(out["data"] or {}))

  def restore_variables(self, abstract_params: Any, abstract_model_state: Any, step: int | None = None
                        ) -> Restored:
    """Restores only a train state's `params` and `model_state` (inference: no optimizer state is read or built).

    Returns `Restored` whose `state` is `{"params": ..., "model_state": ...}`; arguments and errors as `restore`.
    """
    step = self._resolve(step)
    where = f"checkpoint step {step} in {self.directory}"
    targets = {"params": abstract_params, "model_state": abstract_model_state}
    if SINGLE_ITEM in self._saved_items(step, where):
      out = self._restore_single_item_part(targets, step, where)
    else:
      out = self._restore_items(targets, step, where)
    logging.info("checkpoint: restored the variables of step %d from %s", step, self.directory)
    return Restored(step=step, state={k: out[k] for k in targets}, config=dict(out["config"]),
                    data_state=dict(out["data"] or {}))

  def _saved_items(self, step: int, where: str) -> Mapping[str, Any]:
    try:
      return self._manager.item_metadata(step)
    except Exception as e:
      raise DamagedCheckpointError(f"cannot read {where}: {_brief(e)}", "metadata") from e

  def _restore_items(self, targets: Mapping[str, Any], step: int, where: str) -> dict[str, Any]:
    """Reads the array items `targets` (name -> abstract tree) and the JSON items."""
    saved = self._saved_items(step, where)
    present = {name: tree for name, tree in targets.items() if _has_leaves(tree)}
    self._check_compatible({name: saved.get(name) for name in present}, present, where)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          **{name: ocp.args.StandardRestore(tree) for name, tree in present.items()},
          config=ocp.args.JsonRestore(),
          data=ocp.args.JsonRestore()))
    except Exception as e:
      raise DamagedCheckpointError(f"cannot restore {where}: {_brief(e)}", "data") from e
    return {**targets, **{name: out[name] for name in present}, "config": out["config"], "data": out["data"]}

  def _restore_single_item_part(self, targets: Mapping[str, Any], step: int, where: str) -> dict[str, Any]:
    """Reads the parts `targets` of a train state written as one `state` item, leaving the rest on disk."""
    saved = self._saved_items(step, where)
    self._check_compatible({SINGLE_ITEM: saved.get(SINGLE_ITEM)}, {SINGLE_ITEM: dict(targets)}, where,
                           partial=True)
    # Only Orbax's PyTree handler restores part of a tree; it reads what the standard handler wrote.
    reader = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                   item_handlers={SINGLE_ITEM: ocp.PyTreeCheckpointHandler(),
                                                  "config": ocp.JsonCheckpointHandler(),
                                                  "data": ocp.JsonCheckpointHandler()})
    try:
      out = reader.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(dict(targets), restore_args=ocp.checkpoint_utils.construct_restore_args(
              dict(targets)), partial_restore=True),
          config=ocp.args.JsonRestore(),
          data=ocp.args.JsonRestore()))
    except Exception as e:
      raise DamagedCheckpointError(f"cannot restore {where}: {_brief(e)}", "data") from e
    finally:
      reader.close()
    return {**out[SINGLE_ITEM], "config": out["config"], "data": out["data"]}

  def restore_newest_good(self, abstract_state: Any) -> Restored | None:
    """Restores the newest step that restores and holds only finite arrays; None if there is no step at all.

    Each damaged step on the way is moved to `quarantine/<step>-<reason>` with a warning saying what was wrong.
    Raises:
      IncompatibleCheckpointError: a readable step that does not match `abstract_state` (nothing is moved).
      CheckpointError: there were steps, and none of them restores (all are in `quarantine/` now).
    """
    moved = list(self._moved)
    for step in sorted(self.all_steps(), reverse=True):
      try:
        if self._is_empty(step):
          raise DamagedCheckpointError(f"checkpoint step {step} in {self.directory} is an empty folder", "empty")
        restored = self.restore(abstract_state, step)
        if not all_finite(restored.state):
          raise DamagedCheckpointError(f"checkpoint step {step} in {self.directory} holds NaN/inf arrays",
                                       "nonfinite")
      except DamagedCheckpointError as e:
        moved.append(self._quarantine(step, e.reason))
        self._moved.append(moved[-1])
        logging.warning("%s; moved it to %s and trying the previous step", e, moved[-1])
        continue
      if moved:
        logging.warning("resuming from step %d: %d damaged newer step(s) are in %s", step, len(moved),
                        self.directory / QUARANTINE)
      return restored
    if moved:
      raise CheckpointError(f"none of the checkpoints in {self.directory} restores; all {len(moved)} were moved to "
                            f"{self.directory / QUARANTINE} (see the warnings above); a new run would start at step 0")
    return None

  def _is_empty(self, step: int) -> bool:
    folder = self.directory / str(step)
    return folder.is_dir() and not any(folder.iterdir())

  def _quarantine(self, step: int, reason: str) -> pathlib.Path:
    target = self._move_aside(step, reason)
    self._manager.reload()
    return target

  def _move_aside(self, step: int, reason: str) -> pathlib.Path:
    """Moves step folder `step` to `quarantine/<step>-<reason>` (process 0; every process waits for it)."""
    target = self.directory / QUARANTINE / f"{step}-{reason}"
    if jax.process_index() == 0:
      target.parent.mkdir(exist_ok=True)
      n = 1
      while target.exists():  # A step quarantined before (e.g. the same number saved again, damaged again).
        n += 1
        target = self.directory / QUARANTINE / f"{step}-{reason}-{n}"
      shutil.move(str(self.directory / str(step)), str(target))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint quarantine {step}")
    return target

  def _resolve(self, step: int | None) -> int:
    steps = self._manager.all_steps()
    if step is None:
      if not steps:
        raise CheckpointError(f"no checkpoint found in {self.directory}")
      return max(steps)
    if step not in steps:
      raise CheckpointError(f"checkpoint step {step} not found in {self.directory} (have {sorted(steps)})")
    return step

  def _check_compatible(self, saved: Mapping[str, Any], wanted: Mapping[str, Any], where: str,
                        partial: bool = False) -> None:
    """Compares the saved trees (paths, shapes) of each item with the abstract ones before reading any array.

    Paths are spelled as in the whole train state (`params.w`, `opt_state.1.0.mu.w`) whichever item holds them;
    with `partial`, what the checkpoint holds beyond `wanted` is not a mismatch.
    """
    saved_leaves, want_leaves = {}, {}
    for name, tree in saved.items():
      if tree is None:
        raise DamagedCheckpointError(f"cannot read {where}: its {name!r} item has no metadata (incomplete or "
                                     "corrupt)", "metadata")
      saved_leaves.update({_item_path(name, p): leaf for p, leaf in _leaves_with_path(tree)})
    for name, tree in wanted.items():
      want_leaves.update({_item_path(name, p): leaf for p, leaf in _leaves_with_path(tree)})
    problems = []
    for key in sorted(set(saved_leaves) ^ set(want_leaves)):
      if key in saved_leaves:
        if not partial:
          problems.append(f"{key} only in the checkpoint")
      else:
        problems.append(f"{key} missing from the checkpoint")
    for key in sorted(set(saved_leaves) & set(want_leaves)):
      got, want = tuple(saved_leaves[key].shape), tuple(want_leaves[key].shape)
      if got != want:
        problems.append(f"{key} has shape {got} in the checkpoint, the model expects {want}")
    if problems:
      shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
      raise IncompatibleCheckpointError(f"{where} is incompatible with this model/config:\n  {shown}")


def _item_path(item: str, path) -> str:
  name = _path_name(path)
  return name if item in (SINGLE_ITEM, TRAINING_ITEM) else f"{item}.{name}"


def _path_name(path) -> str:
  """`opt_state.1.0.mu.w`: a path spelled the same for a live pytree and Orbax's metadata tree."""
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
  return ".".join(parts)


def _leaves_with_path(tree: Any):
  return jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))


def peek_config(directory: str | pathlib.Path) -> dict | None:
  """The JSON config of the newest step in `directory`, read as a file (no Orbax, no JAX backend), so commands
  can check what a workdir holds before they start; None if no step has a readable config."""
  directory = pathlib.Path(directory)
  steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()),
                 reverse=True) if directory.is_dir() else []
  for step in steps:
    try:
      return json.loads((directory / str(step) / "config" / "metadata").read_text())
    except (OSError, ValueError):
      continue
  return None


def all_finite(tree: Any) -> bool:
  """Whether every floating-point array of `tree` is free of NaN/inf (one jitted reduction per array)."""
  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return True
  return bool(jax.jit(lambda xs: jnp.all(jnp.stack([jnp.isfinite(x).all() for x in xs])))(leaves))


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree` (arrays or abstract values) carrying `shardings` (same structure)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
