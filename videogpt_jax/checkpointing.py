"""The only file that knows Orbax: save and restore a train state with its config and data-iterator state.

A checkpoint step holds three items:
- `state`: the train state (any pytree of `jax.Array`s), written asynchronously by every process for its shards;
- `config`: the run's config as JSON, so a checkpoint alone says how to rebuild its model;
- `data`: the data iterator's position as JSON, so a resumed run reads the same batches it would have read.

Restoring takes an abstract state (`jax.ShapeDtypeStruct`s carrying the *target* shardings), so a checkpoint saved
on one mesh restores onto any other. A checkpoint that does not match the abstract state, or cannot be read,
raises one `CheckpointError` naming the directory and step; nothing in the directory is modified by a failed
restore.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

class CheckpointError(RuntimeError):
  """A checkpoint that is missing, unreadable or incompatible with the model being restored."""


@dataclasses.dataclass
class Restored:
  """What `Checkpointer.restore` returns."""
  step: int
  state: Any
  config: dict
  data_state: dict


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
    policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
    best_fn = None
    if best_metric is not None:
      best_fn = lambda metrics: float(metrics[best_metric])
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=best_mode == "min", n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn, best_mode=best_mode,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, read_only=read_only, create=not read_only)
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
          "state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
          "data": ocp.JsonCheckpointHandler()})
    except Exception as e:  # A damaged directory is reported once, clearly.
      raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {type(e).__name__}: {e}") from e

  # --- queries -------------------------------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def best_step(self) -> int | None:
    return self._manager.best_step() if self.best_metric is not None else None

  # --- save ----------------------------------------------------------------------------------------------------
  def save(self, step: int, state: Any, *, config: Any, data_state: Mapping[str, Any] | None = None,
           metrics: Mapping[str, float] | None = None) -> bool:
    """Starts writing `state` at `step` (asynchronously); returns whether a save was started."""
    if step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(_to_json(config)),
        data=ocp.args.JsonSave(dict(data_state or {})))
    clean_metrics = None
    if metrics is not None and self.best_metric is not None:
      clean_metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
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
      raise CheckpointError(f"cannot read the config of checkpoint step {step} in {self.directory}: "
                            f"{type(e).__name__}: {e}") from e
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
    self._check_compatible(abstract_state, step, where)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          config=ocp.args.JsonRestore(),
          data=ocp.args.JsonRestore()))
    except Exception as e:
      raise CheckpointError(f"cannot restore {where}: {type(e).__name__}: {e}") from e
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return Restored(step=step, state=out["state"], config=dict(out["config"]), data_state=dict(out["data"] or {}))

  def _resolve(self, step: int | None) -> int:
    steps = self._manager.all_steps()
    if step is None:
      if not steps:
        raise CheckpointError(f"no checkpoint found in {self.directory}")
      return max(steps)
    if step not in steps:
      raise CheckpointError(f"checkpoint step {step} not found in {self.directory} (have {sorted(steps)})")
    return step

  def _check_compatible(self, abstract_state: Any, step: int, where: str) -> None:
    """Compares the saved tree (paths, shapes) with `abstract_state` before reading any array."""
    try:
      saved = self._manager.item_metadata(step)["state"]
    except Exception as e:
      raise CheckpointError(f"cannot read {where}: {type(e).__name__}: {e}") from e
    if saved is None:
      raise CheckpointError(f"cannot read {where}: its 'state' item has no metadata (incomplete or corrupt)")
    saved_leaves = {_path_name(p): leaf for p, leaf in _leaves_with_path(saved)}
    want_leaves = {_path_name(p): leaf for p, leaf in _leaves_with_path(abstract_state)}
    problems = []
    for key in sorted(set(saved_leaves) ^ set(want_leaves)):
      problems.append(f"{key} {'only in the checkpoint' if key in saved_leaves else 'missing from the checkpoint'}")
    for key in sorted(set(saved_leaves) & set(want_leaves)):
      got, want = tuple(saved_leaves[key].shape), tuple(want_leaves[key].shape)
      if got != want:
        problems.append(f"{key} has shape {got} in the checkpoint, the model expects {want}")
    if problems:
      shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
      raise CheckpointError(f"{where} is incompatible with this model/config:\n  {shown}")


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


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree` (arrays or abstract values) carrying `shardings` (same structure)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
