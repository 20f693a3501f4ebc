r"""Builds one of the local TFDS datasets from files on disk.

  python -m videogpt_jax.data.build --dataset=bair --manual_dir=/data/bair --data_dir=~/tensorflow_datasets
  python -m videogpt_jax.data.build --dataset=ucf101 --config=fold1_64 --manual_dir=/data/ucf --data_dir=...
  python -m videogpt_jax.data.build --dataset=moving_mnist --config=tiny --data_dir=/tmp/tfds  # no download

Prints the split sizes and the number of skipped (corrupt, truncated, too short, wrongly sized) inputs.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from absl import logging

from videogpt_jax.data import builders

_DATASET = flags.DEFINE_enum("dataset", None, sorted(builders.BUILDERS), "Dataset to build.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write the dataset to.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder holding the source files (see --dataset docs).")
_CONFIG = flags.DEFINE_string("config", None, "Builder config, e.g. fold2_64 (ucf101), tiny (moving_mnist), "
                              "res128 (video_folder). Default: the builder's default.")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)  # TFDS reports progress through absl logging and tqdm.
  manual_dir = os.path.expanduser(_MANUAL_DIR.value) if _MANUAL_DIR.value else None
  return builders.build_and_report(_DATASET.value, os.path.expanduser(_DATA_DIR.value), manual_dir=manual_dir,
                                   config=_CONFIG.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["dataset", "data_dir"])
  app.run(main)
