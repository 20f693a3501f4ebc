"""The train loop both trainers run: steps, progress lines, TensorBoard, evals, checkpoints, NaN guard, SIGTERM.

The VQ-VAE and GPT trainers differ only in what is specific to their stage (model, update step, evals) and hand
those to `run_loop`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterator

import jax
from absl import logging

from videogpt_jax import checkpointing
from videogpt_jax.train.common import (NonFiniteLossError, PreemptionGuard, Progress, SummaryWriter, TrainState,
                                       first_non_finite, is_main_process)


@dataclasses.dataclass
class LoopResult:
  step: int
  history: list[tuple[int, dict[str, float]]]
  stopped: str  # "done" or "preempted"


def run_loop(*, config: Any, state: TrainState, train_step: Callable, batches: Iterator[dict],
             data_state: Callable[[], dict], checkpointer: checkpointing.Checkpointer | None,
             writer: SummaryWriter, items_per_step: int, item_name: str,
             evals: Callable[[int, TrainState], dict] | None = None,
             metrics_file: str | os.PathLike | None = None) -> tuple[TrainState, LoopResult]:
  """Runs `train_step` from `state.step` to `config.total_steps`.

  Every `config.log_every` steps (and before every checkpoint) the metrics of all steps since the last check
  are fetched and checked for NaN/inf, including the step's `finite` flag (all updated parameters and optimiser
  state finite, computed in the step); the first bad one raises `NonFiniteLossError` and nothing after the last
  good checkpoint is saved. So a checkpoint is only written from a state verified finite. Checkpoints every
  `config.checkpoint_every` steps, at the end, and on SIGTERM.

  Args:
    train_step: jitted `(state, batch) -> (state, metrics)`; `metrics["finite"]` (scalar bool) marks the
      checkpoints it verified as good (see `Checkpointer.save`).
    batches: yields global batches in order; `data_state()` describes the position after the last one drawn.
    evals: `(step, state) -> {"scalars": {...}, "videos": {name: (B, T, H, W, 3)}}` after every step; it returns
      `{}` when nothing is due (each trainer has its own schedule: evals, samples).
    metrics_file: process 0 appends every step's metrics to it as JSON lines (`{"step": ..., "loss": ...}`);
      rows of steps after `state.step` (left by a run that stopped before its next checkpoint) are dropped first,
      so a resumed run writes each step once.
  """
  total = int(config.total_steps)
  log_every, ckpt_every = int(config.log_every), int(config.checkpoint_every)
  step = int(jax.device_get(state.step))
  progress = Progress(total, items_per_step, item_name, start_step=step)
  pending: list[tuple[int, Any]] = []
  history: list[tuple[int, dict[str, float]]] = []
  last_saved = checkpointer.latest_step() if checkpointer else None
  verified = True  # every step since the last save reported `finite`
  if metrics_file is not None and is_main_process():
    drop_rows_after(metrics_file, step)

  def drain() -> None:
    nonlocal pending, verified
    fetched = [(s, {k: float(v) for k, v in m.items()}) for s, m in jax.device_get(pending)]
    pending = []
    bad = first_non_finite(fetched)
    broken = next((s for s, m in fetched if m.get("finite", 1.0) == 0.0), None)
    if broken is not None and (bad is None or broken < bad[0]):
      bad = (broken, "the updated parameters/optimiser state", "non-finite")
    if bad is not None:
      if checkpointer:
        checkpointer.wait()
      where = (f"the last good checkpoint is step {last_saved} in {checkpointer.directory}" if checkpointer and
               last_saved is not None else "no checkpoint was saved")
      raise NonFiniteLossError(f"{bad[1]} is {bad[2]} at step {bad[0]}: training stopped; {where} (lower the "
                               "learning rate, enable config.grad_clip, or check the input data)")
    verified = verified and all("finite" in m for _, m in fetched)
    for _, m in fetched:
      m.pop("finite", None)
    history.extend(fetched)
    if metrics_file is not None and is_main_process() and fetched:
      with open(metrics_file, "a") as f:
        f.writelines(json.dumps({"step": s, **m}) + "\n" for s, m in fetched)

  def save(at: int) -> None:
    nonlocal last_saved, verified
    drain()  # Raises before a non-finite state could be written.
    if checkpointer and at != last_saved:
      checkpointer.save(at, state, config=config, data_state=data_state(),
                        metrics=history[-1][1] if history else None, good=verified)
      last_saved, verified = at, True

  stopped = "done"
  with PreemptionGuard() as guard:
    while step < total:
      batch = next(batches)
      state, metrics = train_step(state, batch)
      step += 1
      pending.append((step, metrics))
      if step % log_every == 0 or step == total:
        drain()
        text, rates = progress.line(step, history[-1][1])
        logging.info("%s", text)
        writer.scalars(step, {**{f"train/{k}": v for k, v in history[-1][1].items()}, **rates})
      if evals is not None:
        out = evals(step, state)
        writer.scalars(step, out.get("scalars", {}))
        for name, video in out.get("videos", {}).items():
          if video is not None:
            writer.videos(step, name, video)
      if ckpt_every and step % ckpt_every == 0:
        save(step)
      if guard.should_stop():
        save(step)
        stopped = "preempted"
        logging.warning("stopped by SIGTERM at step %d after saving a checkpoint", step)
        break
  if stopped == "done":
    save(step)
  drain()
  if checkpointer:
    checkpointer.wait()
  writer.flush()
  return state, LoopResult(step=step, history=history, stopped=stopped)


def drop_rows_after(metrics_file: str | os.PathLike, step: int) -> None:
  """Rewrites `metrics_file` without the rows of steps after `step` (and any line cut short by a kill)."""
  if not os.path.exists(metrics_file):
    return
  kept, dropped = [], 0
  with open(metrics_file) as f:
    for line in f:
      try:
        row_step = int(json.loads(line)["step"])
      except (ValueError, KeyError, TypeError):
        dropped += 1
        continue
      if row_step <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    tmp = f"{metrics_file}.tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, metrics_file)
    logging.info("%s: dropped %d rows after step %d (they are trained again)", metrics_file, dropped, step)
