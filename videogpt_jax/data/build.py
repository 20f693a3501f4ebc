r"""Builds one of the local TFDS datasets from files on disk.

  python -m videogpt_jax.data.build --dataset=bair --manual_dir=/data/bair --data_dir=~/tensorflow_datasets
  python -m videogpt_jax.data.build --dataset=ucf101 --config=fold1_64 --manual_dir=/data/ucf --data_dir=...
  python -m videogpt_jax.data.build --dataset=moving_mnist --config=tiny --data_dir=/tmp/tfds  # no download

Prints the split sizes and the number of skipped (corrupt, truncated, too short, wrongly sized) inputs.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags
from absl import logging

from videogpt_jax import cli
from videogpt_jax.train import config_checks

# The names of `builders.BUILDERS`, spelled out so the flags are checked before TensorFlow is imported.
DATASETS = ("bair", "moving_mnist", "ucf101", "video_folder")
_DECODED = ("ucf101", "video_folder")

_DATASET = flags.DEFINE_enum("dataset", None, DATASETS, "Dataset to build.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write the dataset to.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder holding the source files (see --dataset docs).")
_KEEP_PARTIAL = flags.DEFINE_bool(
    "keep_partial", False, "ucf101, video_folder: keep the frames of a video whose decode ended early (a truncated "
    "file, garbage mid-stream), listed as partial in skipped_inputs.json; the dataset is built as config "
    "<config>_keep_partial. Default: skip such videos (also listed).")
_CONFIG = flags.DEFINE_string("config", None, "Builder config, e.g. fold2_64 (ucf101), tiny (moving_mnist), "
                              "res128 (video_folder). Default: the builder's default.")


def check_flags() -> tuple[str, str | None]:
  """`(data_dir, manual_dir)`, expanded; raises `ConfigError` naming the flag before anything is read."""
  data_dir = os.path.expanduser(_DATA_DIR.value)
  config_checks.check_directory_flag("--data_dir", data_dir, must_exist=False)
  manual_dir = os.path.expanduser(_MANUAL_DIR.value) if _MANUAL_DIR.value else None
  if manual_dir is not None:
    # A missing one is the builder's to report: its message says what to download and where to put it.
    config_checks.check_directory_flag("--manual_dir", manual_dir, must_exist=False)
  if _KEEP_PARTIAL.value and _DATASET.value not in _DECODED:
    raise cli.UsageError(f"--keep_partial applies to the datasets decoded from video files ({', '.join(_DECODED)}), "
                         f"not --dataset={_DATASET.value}")
  return data_dir, manual_dir


def main(argv: list[str]) -> int:
  cli.no_extra_args(argv)
  data_dir, manual_dir = check_flags()
  from videogpt_jax.data import builders  # Deferred: TensorFlow starts only once the flags are known good.
  logging.set_verbosity(logging.INFO)  # TFDS reports progress through absl logging and tqdm.
  config = _CONFIG.value
  if _KEEP_PARTIAL.value:
    cls = builders.BUILDERS[_DATASET.value]
    name = config or cls.BUILDER_CONFIGS[0].name
    if name not in cls.builder_configs:
      raise cli.UsageError(f"--config={name}: unknown for --dataset={_DATASET.value}; expected one of "
                           f"{sorted(cls.builder_configs)}")
    # Its own config name, so the dataset lands beside (not over) the one built with partial clips skipped.
    config = dataclasses.replace(cls.builder_configs[name], name=f"{name}_keep_partial", keep_partial=True)
  return builders.build_and_report(_DATASET.value, data_dir, manual_dir=manual_dir, config=config)


if __name__ == "__main__":
  flags.mark_flags_as_required(["dataset", "data_dir"])
  cli.run(main)
