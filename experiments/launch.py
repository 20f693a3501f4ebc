"""What the entry points share: flags for multi-host runs and the config, and one clean error for bad input."""
from __future__ import annotations

import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags(workdir_help: str) -> None:
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. experiments/configs/vqvae_bair.py:runlocal.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, workdir_help)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host), or 'auto' on a Cloud TPU pod / SLURM / Open MPI job; "
                      "default $JAX_COORDINATOR_ADDRESS.")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host); default $JAX_NUM_PROCESSES or 1.")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-host); default $JAX_PROCESS_ID.")
  flags.mark_flags_as_required(["config", "workdir"])


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
  """Joins the other processes (no-op alone) and quiets library logs; call first in `main`."""
  logging.get_absl_handler().addFilter(QuietLibraries())
  from videogpt_jax.train import common
  common.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def run_reporting_errors(fn) -> None:
  """Runs `fn()`; errors a user can fix (data, checkpoint, NaN, config values) end the program with one line."""
  from videogpt_jax.checkpointing import CheckpointError
  from videogpt_jax.data.builders import ManualDataError
  from videogpt_jax.train.common import NonFiniteLossError
  try:
    fn()
  except (CheckpointError, ManualDataError, NonFiniteLossError, ValueError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"ERROR {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: the overridden field does not exist.
    overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
    detail = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    print(f"ERROR: unknown config field in override(s) {overrides}: {detail}", file=sys.stderr)
    sys.exit(2)


def run(main) -> None:
  """`app.run(main)`, reporting an override of a config field that does not exist in one line, not a traceback.

  (A value of the wrong type is already one line from absl: "FATAL Flags parsing error: flag --config.x=...".)
  """
  app.run(main, flags_parser=_parse_flags)
