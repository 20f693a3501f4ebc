"""Local TFDS builders (no downloads: everything comes from manual_dir or from PyPI packages) and their registry.

`load_builder("moving_mnist", data_dir, config="tiny")` returns a prepared builder, building it first when
needed; builds report skipped inputs in `builder.skipped`, saved as `skipped_inputs.json` in the dataset
directory (`read_skipped(builder)`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO

import tensorflow_datasets as tfds

from videogpt_jax.data.builders._common import ManualDataError
from videogpt_jax.data.builders.bair import Bair
from videogpt_jax.data.builders.moving_mnist import MovingMnist, MovingMnistConfig
from videogpt_jax.data.builders.ucf101 import Ucf101, Ucf101Config
from videogpt_jax.data.builders.video_folder import VideoFolder, VideoFolderConfig

SKIPPED_FILE = "skipped_inputs.json"
FILE_FORMAT = "array_record"

BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "bair": Bair,
    "ucf101": Ucf101,
    "moving_mnist": MovingMnist,
    "video_folder": VideoFolder,
}

__all__ = ["BUILDERS", "Bair", "ManualDataError", "MovingMnist", "MovingMnistConfig", "Ucf101", "Ucf101Config",
           "VideoFolder", "VideoFolderConfig", "get_builder", "load_builder", "read_skipped", "build_and_report"]


def get_builder(name: str, data_dir: str | os.PathLike,
                config: str | tfds.core.BuilderConfig | None = None) -> tfds.core.GeneratorBasedBuilder:
  """Instantiates the builder `name` (one of `BUILDERS`) without preparing it.

  Raises:
    ValueError: unknown dataset or config name.
  """
  if name not in BUILDERS:
    raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(BUILDERS)}.")
  cls = BUILDERS[name]
  if isinstance(config, str) and config not in cls.builder_configs:
    raise ValueError(f"Unknown config {config!r} for dataset {name!r}; expected one of "
                     f"{sorted(cls.builder_configs)} (or pass a {cls.__name__} config object).")
  builder = cls(data_dir=os.fspath(data_dir), config=config)
  if builder.is_prepared():
    if builder.info.file_format != tfds.core.FileFormat(FILE_FORMAT):
      raise ValueError(
          f"{name}: the dataset in {builder.data_dir} is stored as {builder.info.file_format.value} files, but the "
          f"input pipeline reads {FILE_FORMAT} files (random access): rebuild it with `python -m "
          f"videogpt_jax.data.build --dataset={name} --data_dir=<a new directory>` (or move that directory away)")
    return builder
  # ArrayRecord: the input pipeline reads examples by index (one global order for any number of hosts, resumed
  # without reading what came before).
  return cls(data_dir=os.fspath(data_dir), config=config, file_format=FILE_FORMAT)


def load_builder(name: str, data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None = None,
                 config: str | tfds.core.BuilderConfig | None = None) -> tfds.core.GeneratorBasedBuilder:
  """Returns the builder `name`, prepared in `data_dir` (built from `manual_dir` first if not there yet).

  Raises:
    ManualDataError: the dataset is not built and `manual_dir` lacks what it needs (the message says what).
  """
  builder = get_builder(name, data_dir, config)
  if not builder.is_prepared():
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir is not None else None)
    builder.download_and_prepare(download_config=download_config)
    with open(os.path.join(builder.data_dir, SKIPPED_FILE), "w") as f:
      json.dump([{"source": s, "reason": r} for s, r in builder.skipped], f, indent=1)
  return builder


def read_skipped(builder: tfds.core.DatasetBuilder) -> list[tuple[str, str]]:
  """The inputs skipped when `builder`'s dataset was built (saved beside it by `load_builder`)."""
  path = os.path.join(builder.data_dir, SKIPPED_FILE)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [(e["source"], e["reason"]) for e in json.load(f)]


def build_and_report(name: str, data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None = None,
                     config: str | None = None, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                     max_shown: int = 20) -> int:
  """Builds (or finds) a dataset and prints its split sizes and skipped inputs; returns a process exit code."""
  try:
    builder = load_builder(name, data_dir, manual_dir=manual_dir, config=config)
  except (ManualDataError, ValueError) as e:
    print(f"ERROR: {e}", file=err)
    return 1
  config_name = builder.builder_config.name if builder.builder_config else ""
  print(f"Built {builder.name}/{config_name} in {builder.data_dir}", file=out)
  for split, info in builder.info.splits.items():
    print(f"  {split}: {info.num_examples} examples", file=out)
  skipped = read_skipped(builder)
  for source, reason in skipped[:max_shown]:
    print(f"  skipped {source}: {reason}", file=out)
  if len(skipped) > max_shown:
    print(f"  ... and {len(skipped) - max_shown} more", file=out)
  print(f"Skipped inputs: {len(skipped)}", file=out)
  return 0
