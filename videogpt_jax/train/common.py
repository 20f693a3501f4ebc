"""Pieces both trainers share: train state, optimizer, platform, sharded init, multi-host setup,
progress/TensorBoard, checkpoint helpers, NaN guard, preemption. The loop that uses them is `loop.run_loop`; the
input pipelines are `inputs.py`.
"""
from __future__ import annotations

import math
import os
import pathlib
import signal
import time
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from videogpt_jax import checkpointing, inference, sharding, visualize
from videogpt_jax.models import platforms


# ---------------------------------------------------------------------------------------------------------------
# Train state and optimizer.
# ---------------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
  """`params` are trained by `opt_state`; `model_state` holds the other mutable collections (e.g. `batch_stats`,
  `codebook`), updated by the forward pass itself."""
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any


def learning_rate_schedule(config: Any) -> optax.Schedule:
  """The paper's schedule: linear warmup (optional) then cosine decay to 0 at `total_steps`, or constant."""
  lr, warmup, total = float(config.lr), int(config.get("warmup_steps", 0)), int(config.total_steps)
  kind = config.get("lr_schedule", "cosine")
  if kind == "constant":
    return optax.constant_schedule(lr) if warmup == 0 else optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  if kind != "cosine":
    raise ValueError(f"config.lr_schedule must be 'cosine' or 'constant', got {kind!r}")
  if warmup >= total:
    raise ValueError(f"config.warmup_steps={warmup} must be smaller than config.total_steps={total}")
  if warmup == 0:
    return optax.cosine_decay_schedule(lr, total)
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=0.0)


def make_optimizer(config: Any) -> optax.GradientTransformation:
  """Adam (betas `config.adam_b1/b2`) on the schedule above, after global-norm clipping at `config.grad_clip`."""
  parts = []
  clip = float(config.get("grad_clip", 0.0) or 0.0)
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  parts.append(optax.adam(learning_rate_schedule(config), b1=config.get("adam_b1", 0.9),
                          b2=config.get("adam_b2", 0.999)))
  return optax.chain(*parts)


def cast_floats(tree: Any, dtype: Any) -> Any:
  """Casts floating-point leaves to `dtype` (bf16 compute over float32 master parameters)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def resolve_platform(config: Any, mesh: jax.sharding.Mesh) -> Any:
  """A copy of `config` whose `platform` ("" or absent: that of `mesh`'s devices) names the platform the program is
  built for: the models choose their formulations by it, and the checkpointed config records it."""
  platform = platforms.check(config.get("platform", "") or platforms.of_devices(mesh.devices.flat),
                             "config.platform ('' for the mesh's)")
  out = type(config)(config.to_dict()) if hasattr(config, "to_dict") else dict(config)
  out["platform"] = platform
  return out


# ---------------------------------------------------------------------------------------------------------------
# Sharded initialisation.
# ---------------------------------------------------------------------------------------------------------------
def abstract_state(init_fn: Callable[[jax.Array], Any], mesh: jax.sharding.Mesh):
  """`(shardings, abstract)` of `init_fn`'s (possibly `nn.Partitioned`-boxed) state, without allocating it.

  `abstract` holds `jax.ShapeDtypeStruct`s carrying the shardings: the target for a sharded init and for
  restoring a checkpoint onto `mesh`.
  """
  boxed = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = sharding.logical_to_shardings(boxed, mesh)
  return shardings, checkpointing.abstract_with_shardings(nn.meta.unbox(boxed), shardings)


def sharded_init(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: jax.sharding.Mesh):
  """Initialises `init_fn(rng)` directly into its shardings; returns `(state, shardings, abstract)`."""
  shardings, abstract = abstract_state(init_fn, mesh)
  state = jax.jit(lambda r: nn.meta.unbox(init_fn(r)), out_shardings=shardings)(rng)
  return state, shardings, abstract


# ---------------------------------------------------------------------------------------------------------------
# Multi-host.
# ---------------------------------------------------------------------------------------------------------------
def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """`jax.distributed.initialize` from arguments or `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
  `JAX_PROCESS_ID`; `"auto"` lets JAX detect the cluster (Cloud TPU, SLURM, Open MPI); a no-op for a single
  process. Logging below WARNING is silenced on processes other than 0."""
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if coordinator_address == "auto":
    # Cloud TPU pod slices, SLURM and Open MPI jobs describe themselves: JAX finds the coordinator, the number of
    # processes and this process's index on its own.
    jax.distributed.initialize()
    if jax.process_index() != 0:
      logging.set_verbosity(logging.WARNING)
    return
  num_processes = int(num_processes or os.environ.get("JAX_NUM_PROCESSES", 1))
  if process_id is None and "JAX_PROCESS_ID" in os.environ:
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator_address and num_processes == 1:
    raise ValueError(f"--coordinator_address={coordinator_address} needs --num_processes (or JAX_NUM_PROCESSES) "
                     "above 1; without it this would silently run as a single process")
  if num_processes > 1:
    if not coordinator_address or process_id is None:
      raise ValueError("several processes need a coordinator address and a process id "
                       "(--coordinator_address/--process_id or JAX_COORDINATOR_ADDRESS/JAX_PROCESS_ID)")
    # Cross-process collectives for CPU devices (no effect on accelerators). Must precede any backend use.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)


def is_main_process() -> bool:
  return jax.process_index() == 0


# ---------------------------------------------------------------------------------------------------------------
# Observability.
# ---------------------------------------------------------------------------------------------------------------
def log_model_summary(params: Any, state: Any) -> dict[str, Any]:
  """Logs parameter counts (total and per top-level module) and each device's share of the state."""
  counts: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    top = getattr(path[0], "key", str(path[0]))
    counts[top] = counts.get(top, 0) + int(np.prod(leaf.shape))
  total = sum(counts.values())
  logging.info("parameters: %s total", f"{total:,}")
  for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
    logging.info("  %-40s %14s", name, f"{n:,}")
  per_device = sharding.per_device_bytes(state)
  for device, nbytes in sorted(per_device.items()):
    stats = next((d.memory_stats() for d in jax.local_devices() if str(d) == device), None)
    in_use = f", {stats['bytes_in_use'] / 2**20:.1f} MiB in use" if stats and "bytes_in_use" in stats else ""
    logging.info("  train state on %s: %.2f MiB%s", device, nbytes / 2**20, in_use)
  return {"num_params": total, "state_bytes_per_device": per_device}


class Progress:
  """Formats the progress line: step, loss, steps/s, items/s (clips or tokens), ETA."""

  def __init__(self, total_steps: int, items_per_step: int, item_name: str, start_step: int = 0):
    self.total_steps, self.items_per_step, self.item_name = total_steps, items_per_step, item_name
    self._last_step, self._last_time = start_step, time.perf_counter()

  def line(self, step: int, metrics: Mapping[str, float]) -> tuple[str, dict[str, float]]:
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
    eta_s = "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
    shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    text = (f"step {step}/{self.total_steps} | {shown} | {rate:.2f} steps/s | "
            f"{rate * self.items_per_step:.1f} {self.item_name}/s | ETA {eta_s}")
    return text, {"steps_per_sec": rate, f"{self.item_name}_per_sec": rate * self.items_per_step}


class SummaryWriter:
  """TensorBoard scalars and animated videos, written by process 0 only.

  Uses `tf.summary.write` with the scalars/images plugin metadata directly, so it needs TensorFlow but not the
  `tensorboard` package (which tensorflow-cpu does not install).
  """

  def __init__(self, logdir: str | None):
    self._writer = None
    if logdir and is_main_process():
      import tensorflow as tf  # Imported here: only the writing process pays for TensorFlow.
      from tensorflow.core.framework import summary_pb2
      self._tf = tf
      self._metadata = {kind: summary_pb2.SummaryMetadata(
          plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=kind)).SerializeToString()
                        for kind in ("scalars", "images")}
      self._writer = tf.summary.create_file_writer(logdir)

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    tf = self._tf
    with self._writer.as_default():
      for k, v in values.items():
        tf.summary.write(k, tf.constant(float(v), tf.float32), step=step, metadata=self._metadata["scalars"])

  def videos(self, step: int, name: str, video: Any, max_videos: int = 8) -> None:
    """`video (B, T, H, W, 3)` in [-0.5, 0.5], or a list of such rows, as one animated GIF image summary: the
    first `max_videos` clips side by side, rows one above the other (the images plugin shows a GIF as it plays)."""
    if self._writer is None:
      return
    tf = self._tf
    rows = video if isinstance(video, (list, tuple)) else [video]
    frames = visualize.comparison_grid([visualize.to_uint8(np.asarray(r)[:max_videos]) for r in rows])
    # The images plugin's tensor: [width, height, encoded image...] as strings; it serves GIF bytes as image/gif.
    tensor = tf.stack([tf.as_string(frames.shape[2]), tf.as_string(frames.shape[1]),
                       tf.constant(visualize.gif_bytes(frames))])
    with self._writer.as_default():
      tf.summary.write(name, tensor, step=step, metadata=self._metadata["images"])

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------------------------------------------
def checkpoint_dir(workdir: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(workdir) / inference.CHECKPOINTS


def make_checkpointer(config: Any, workdir: str | os.PathLike) -> checkpointing.Checkpointer:
  return checkpointing.Checkpointer(checkpoint_dir(workdir), max_to_keep=int(config.get("keep_checkpoints", 3)),
                                    best_metric=config.get("best_metric") or None,
                                    best_mode=config.get("best_mode", "min"))


def restore_or_keep(checkpointer: checkpointing.Checkpointer, state: Any, abstract: Any, train_iter: Any) -> Any:
  """Resumes from the latest checkpoint if there is one (state and data position); else returns `state`.

  A damaged newest step is moved to `quarantine/` and the previous one restored (`restore_newest_good`); a
  checkpoint that does not match the model raises `CheckpointError`, so nothing of the run is overwritten.
  """
  restored = checkpointer.restore_newest_good(abstract)
  if restored is None:
    logging.info("no checkpoint in %s: starting from step 0", checkpointer.directory)
    return state
  step = restored.step
  if restored.data_state and hasattr(train_iter, "restore"):
    train_iter.restore(restored.data_state)
  logging.info("resuming from step %d (checkpoint %s)", restored.step, checkpointer.directory / str(step))
  return restored.state


# ---------------------------------------------------------------------------------------------------------------
# Failure handling.
# ---------------------------------------------------------------------------------------------------------------
class NonFiniteLossError(RuntimeError):
  """Training produced a NaN/inf loss or gradient norm."""


GUARDED_METRICS = ("loss", "grad_norm")


def first_non_finite(history: list[tuple[int, Mapping[str, float]]]) -> tuple[int, str, float] | None:
  """`(step, metric, value)` of the first NaN/inf among `GUARDED_METRICS` in `history`, or None."""
  for step, metrics in history:
    for name in GUARDED_METRICS:
      if name in metrics and not math.isfinite(metrics[name]):
        return step, name, metrics[name]
  return None


class PreemptionGuard:
  """Turns SIGTERM (preemption) into a flag the loop reads at step boundaries; all processes agree on it."""

  def __init__(self):
    self._flag = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # Not the main thread (e.g. some test runners): preemption is then not intercepted.
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the next step boundary, then stopping")
    self._flag = True

  def should_stop(self) -> bool:
    if jax.process_count() == 1:
      return self._flag
    flags = multihost_utils.process_allgather(np.array([self._flag]))
    return bool(np.any(flags))
