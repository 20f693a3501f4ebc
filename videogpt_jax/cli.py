"""How every command reports what went wrong: one line on stderr, exit code 2 for a usage error (a flag, a config
field, a path) and 1 for a failure while running; the traceback only with `--verbose`.

A command adopts it in two lines: raise `cli.UsageError` (or absl's `app.UsageError`) for bad input *before*
building anything (JAX backend, data, workdir), and start with `cli.run(main)` instead of `app.run(main)`:

    def main(argv):
      cli.no_extra_args(argv)
      config_checks.check_directory_flag("--output", FLAGS.output, must_exist=False)  # raises ConfigError
      ...  # only now import/initialise JAX, read data, create folders

    if __name__ == "__main__":
      cli.run(main)

`ConfigError`s (from `videogpt_jax.train.config_checks`) count as usage errors. Flag parsing errors (unknown
flag, wrong type, missing required flag, a `--config` file that does not load, an unknown config field or
variant) are caught by `cli.run`'s parser and reported the same way. `cli.cleanup_on_failure(workdir)` removes
what a failed run created in a workdir that did not exist before (TensorBoard files, empty folders) and nothing
else. This module imports neither JAX nor TensorFlow.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, NoReturn

from absl import app, flags

from videogpt_jax.train import config_checks
from videogpt_jax.train.config_checks import ConfigError

FLAGS = flags.FLAGS
if "verbose" not in FLAGS:
  flags.DEFINE_bool("verbose", False, "On an error, show its full traceback instead of one line.")

USAGE_EXIT, FAILURE_EXIT = 2, 1


class UsageError(app.UsageError):
  """Bad input named by its flag or file; the command exits with code 2 before building anything."""


def verbose() -> bool:
  """`--verbose` was given (read from argv directly, so it also holds when the flags did not parse)."""
  return any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in sys.argv[1:])


def one_line(text: str) -> str:
  """The message of a multi-line error as one line: its first line and, if that is only a preamble, the last."""
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  if not lines:
    return ""
  if len(lines) == 1:
    return lines[0]
  last = lines[-1]
  for prefix in ("ValueError: ", "KeyError: ", "AttributeError: ", "OSError: ", "FileNotFoundError: "):
    last = last.removeprefix(prefix)
  return f"{lines[0].rstrip(':')}: {last}" if last not in lines[0] else lines[0]


def fail(message: str, code: int = FAILURE_EXIT) -> NoReturn:
  print(f"ERROR: {one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(code)


def no_extra_args(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def _raw_flag(argv: list[str], name: str) -> str:
  for arg in argv[1:]:
    if arg.startswith((f"--{name}=", f"-{name}=")):
      return arg.split("=", 1)[1]
  return ""


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with each error as one line and exit code 2 (absl: a block of text and exit code 1)."""
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    if verbose():
      raise
    fail(str(e).replace("\\n", "\n"), USAGE_EXIT)
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a field that does not exist.
    if verbose():
      raise
    given = [a for a in argv[1:] if a.startswith("--config.")]
    detail = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    fail(f"unknown config field in override(s) {' '.join(given)}: {detail}{config_checks.moved_field_hint(given)}",
         USAGE_EXIT)
  # ml_collections stands in an error object for a `--config` file that did not load; it raises when first read.
  for name in list(FLAGS):
    value = FLAGS[name].value
    if type(value).__name__ == "_ErrorConfig":
      try:
        value.keys()
      except Exception as e:  # pylint: disable=broad-except
        if verbose():
          raise
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        fail(f"--{name}={_raw_flag(argv, name)}: cannot load it: {lines[-1] if lines else type(e).__name__}",
             USAGE_EXIT)
  return rest


# Failures whose message already says what to do (by qualified name: this module imports none of them).
_EXPLAINED = {"videogpt_jax.checkpointing.CheckpointError", "videogpt_jax.train.common.NonFiniteLossError",
              "videogpt_jax.data.builders._common.ManualDataError", "videogpt_jax.data.video_io.VideoDecodeError",
              "videogpt_jax.convert.checkpoint_io.WeightsFileError"}
_USAGE = {"videogpt_jax.evaluation.runner.SettingsError"}  # flag values found wrong once the devices are known


def _report(e: BaseException) -> NoReturn:
  names = {f"{c.__module__}.{c.__qualname__}" for c in type(e).__mro__}
  if isinstance(e, (app.UsageError, ConfigError)) or names & _USAGE:
    fail(str(e), USAGE_EXIT)
  name = type(e).__name__
  explained = bool(names & _EXPLAINED)
  fail(f"{name}: {one_line(str(e)) or name}" + ("" if explained else " (--verbose shows the traceback)"),
       FAILURE_EXIT)


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)` with the error contract above."""

  def guarded(argv):
    try:
      return main(argv)
    except (SystemExit, KeyboardInterrupt):
      raise
    except Exception as e:  # pylint: disable=broad-except
      if verbose():
        raise
      _report(e)

  app.run(guarded, flags_parser=_parse_flags)


@contextlib.contextmanager
def cleanup_on_failure(workdir: str | os.PathLike | None):
  """On an exception, removes from `workdir` what a run that failed at start-up leaves, if `workdir` did not
  exist before: TensorBoard event files and empty folders. Anything else (checkpoints, metrics) is kept."""
  existed = workdir is None or os.path.exists(workdir)
  try:
    yield
  except BaseException:
    if not existed:
      _remove_start_up_leftovers(os.fspath(workdir))
    raise


def _remove_start_up_leftovers(workdir: str) -> None:
  for root, dirs, files in os.walk(workdir, topdown=False):
    for name in files:
      if os.path.basename(root) == "tensorboard" and name.startswith("events.out.tfevents."):
        os.remove(os.path.join(root, name))
    with contextlib.suppress(OSError):  # not empty: something worth keeping is in it
      os.rmdir(root)
