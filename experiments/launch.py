"""What the trainers share: flags for multi-host runs and the config, their checks before anything starts, and
quiet library logs. Errors are reported by `videogpt_jax.cli` (one line; exit code 2 for bad input)."""
from __future__ import annotations

import logging as py_logging
import os

from absl import flags, logging
from ml_collections import config_flags

from videogpt_jax import cli
from videogpt_jax.train import common, config_checks

FLAGS = flags.FLAGS


def define_flags(workdir_help: str) -> None:
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. experiments/configs/vqvae_bair.py:runlocal.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, workdir_help)
  define_distributed_flags()
  flags.mark_flags_as_required(["config", "workdir"])


def define_distributed_flags() -> None:
  """The multi-host flags `setup` reads (for entry points without a config or workdir, e.g. sampling)."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host), or 'auto' on a Cloud TPU pod / SLURM / Open MPI job; "
                      "default $JAX_COORDINATOR_ADDRESS.")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host); default $JAX_NUM_PROCESSES or 1.")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-host); default $JAX_PROCESS_ID.")


def check_distributed_flags(coordinator_address: str | None, num_processes: int | None,
                            process_id: int | None) -> None:
  """The multi-host flags (or their JAX_* variables) agree; raises `cli.UsageError` naming the flag."""
  coordinator = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  try:
    n = int(num_processes if num_processes is not None else os.environ.get("JAX_NUM_PROCESSES", 1))
    pid = process_id if process_id is not None else (
        int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None)
  except ValueError as e:
    raise cli.UsageError(f"JAX_NUM_PROCESSES / JAX_PROCESS_ID must be integers: {e}") from None
  if n < 1:
    raise cli.UsageError(f"--num_processes={n}: must be a positive integer")
  if coordinator == "auto":
    return
  if coordinator and n == 1:
    raise cli.UsageError(f"--coordinator_address={coordinator} needs --num_processes (or JAX_NUM_PROCESSES) above "
                         "1; without it this would silently run as one process")
  if n > 1 and (not coordinator or pid is None):
    raise cli.UsageError(f"--num_processes={n} needs --coordinator_address and --process_id (or "
                         "JAX_COORDINATOR_ADDRESS / JAX_PROCESS_ID)")
  if pid is not None and not 0 <= pid < n:
    raise cli.UsageError(f"--process_id={pid}: must be in [0, {n}) for --num_processes={n}")


def check_flags(stage: str) -> None:
  """Everything the flags and the config can say is wrong, before JAX, data or the workdir are touched."""
  check_distributed_flags(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  config_checks.check_directory_flag("--workdir", FLAGS.workdir, must_exist=False)
  config_checks.check_train_config(FLAGS.config, stage)


class QuietLibraries(py_logging.Filter):
  """Drops INFO records of Orbax (dozens per checkpoint) and TFDS, and the deprecation notices TFDS and TF print
  about their own internals at every dataset read (nothing a user can act on); other warnings still show."""

  _OWN_DEPRECATIONS = ("`TensorInfo.dtype` is deprecated", "calling map_fn_v2")

  def filter(self, record: py_logging.LogRecord) -> bool:
    noisy = any(part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/"))
    if record.levelno < py_logging.WARNING:
      return not noisy
    library = noisy or "/tensorflow/" in record.pathname
    return not (library and any(m in record.getMessage() for m in self._OWN_DEPRECATIONS))


def setup() -> None:
  """Joins the other processes (no-op alone) and quiets library logs; call after `check_flags`."""
  logging.get_absl_handler().addFilter(QuietLibraries())
  common.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
