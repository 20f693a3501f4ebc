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
  are fetched and checked for NaN/inf; the first bad one raises `NonFiniteLossError` and nothing after the last
  good checkpoint is saved. Checkpoints every `config.checkpoint_every` steps, at the end, and on SIGTERM.

  Args:
    train_step: jitted `(state, batch) -> (state, metrics)`.
    batches: yields global batches in order; `data_state()` describes the position after the last one drawn.
    evals: `(step, state) -> {"scalars": {...}, "videos": {name: (B, T, H, W, 3)}}`, every `config.eval_every`.
    metrics_file: process 0 appends every step's metrics to it as JSON lines (`{"step": ..., "loss": ...}`).
  """
  total = int(config.total_steps)
  log_every, ckpt_every = int(config.log_every), int(config.checkpoint_every)
  eval_every = int(config.get("eval_every", 0) or 0)
  step = int(jax.device_get(state.step))
  progress = Progress(total, items_per_step, item_name, start_step=step)
  pending: list[tuple[int, Any]] = []
  history: list[tuple[int, dict[str, float]]] = []
  last_saved = checkpointer.latest_step() if checkpointer else None

  def drain() -> None:
    nonlocal pending
    fetched = [(s, {k: float(v) for k, v in m.items()}) for s, m in jax.device_get(pending)]
    pending = []
    bad = first_non_finite(fetched)
    if bad is not None:
      if checkpointer:
        checkpointer.wait()
      where = (f"the last good checkpoint is step {last_saved} in {checkpointer.directory}" if checkpointer and
               last_saved is not None else "no checkpoint was saved")
      raise NonFiniteLossError(f"{bad[1]} is {bad[2]} at step {bad[0]}: training stopped; {where} (lower the "
                               "learning rate, enable config.grad_clip, or check the input data)")
    history.extend(fetched)
    if metrics_file is not None and is_main_process() and fetched:
      with open(metrics_file, "a") as f:
        f.writelines(json.dumps({"step": s, **m}) + "\n" for s, m in fetched)

  def save(at: int) -> None:
    nonlocal last_saved
    drain()
    if checkpointer and at != last_saved:
      checkpointer.save(at, state, config=config, data_state=data_state(),
                        metrics=history[-1][1] if history else None)
      last_saved = at

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
      if evals is not None and eval_every and (step % eval_every == 0 or step == total):
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
