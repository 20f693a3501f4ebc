"""UCF-101 (Soomro et al. 2012) from local files: the `.avi` clips and the official train/test split lists.

TFDS's own `ucf101` downloads its split file; this builder reads everything from manual_dir. Clips are decoded
with ffmpeg and resized on build (shorter side to `resolution`, then centre crop) so the built dataset stays small;
the full clip is kept (VideoGPT samples 16-frame windows from it). Labels are 0-based indices into `classInd.txt`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from videogpt_jax.data import video_io
from videogpt_jax.data.builders import _common

LIST_DIR = "ucfTrainTestlist"
VIDEO_DIRS = ("UCF-101", "UCF101")

_INSTRUCTIONS = f"""
Download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from https://www.crcv.ucf.edu/data/UCF101.php,
extract both into manual_dir so that it holds `<manual_dir>/UCF-101/<Class>/v_<Class>_gXX_cYY.avi` (a flat
`<manual_dir>/UCF101/*.avi` also works) and `<manual_dir>/{LIST_DIR}/classInd.txt`,
`<manual_dir>/{LIST_DIR}/trainlist0{{1,2,3}}.txt`, `<manual_dir>/{LIST_DIR}/testlist0{{1,2,3}}.txt`.
"""


@dataclasses.dataclass(eq=False)
class Ucf101Config(tfds.core.BuilderConfig):
  """Which official fold to build and how clips are resized/limited on build."""
  fold: int = 1
  resolution: int = 64
  min_frames: int = 16
  max_frames: int | None = None
  keep_partial: bool = False  # keep (and list in skipped_inputs.json) clips whose decode ended early; else skip
  decode_workers: int = 0


def _configs() -> list[Ucf101Config]:
  return [Ucf101Config(name=f"fold{fold}_{res}", description=f"Official fold {fold}, {res}x{res} frames.",
                       fold=fold, resolution=res)
          for fold in (1, 2, 3) for res in (64, 128)]


def read_class_index(path: str) -> list[str]:
  """Class names ordered by their 1-based index in `classInd.txt` (lines `"<index> <ClassName>"`)."""
  entries = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        index, name = line.split()
        entries[int(index)] = name
  if sorted(entries) != list(range(1, len(entries) + 1)):
    raise ValueError(f"{path}: class indices are not 1..{len(entries)}")
  return [entries[i] for i in range(1, len(entries) + 1)]


def read_split_list(path: str) -> list[str]:
  """Clip entries `"<Class>/<file>.avi"` of a train/test list (train lists carry a trailing label column)."""
  with open(path) as f:
    return [line.split()[0] for line in f if line.strip()]


class Ucf101(_common.SkipLogMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """UCF-101 action videos, one official fold, frames resized on build."""

  name = "ucf101"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Local build from manual_dir clips and split lists."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = _configs()
  DEFAULT_CONFIG_NAME = "fold1_64"

  def _info(self) -> tfds.core.DatasetInfo:
    res = self.builder_config.resolution
    return tfds.core.DatasetInfo(
        builder=self,
        description="UCF-101 clips resized (shorter side) and centre-cropped on build.",
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Video((None, res, res, 3)),
            "label": tfds.features.ClassLabel(),  # names come from classInd.txt in _split_generators.
            "path": tfds.features.Text(),
        }),
        homepage="https://www.crcv.ucf.edu/data/UCF101.php",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self.builder_config
    root = _common.manual_path(dl_manager, self.name, _INSTRUCTIONS)
    list_dir = os.path.join(root, LIST_DIR)
    needed = {name: os.path.join(list_dir, name)
              for name in ("classInd.txt", f"trainlist0{cfg.fold}.txt", f"testlist0{cfg.fold}.txt")}
    missing = [p for p in needed.values() if not os.path.isfile(p)]
    if missing:
      raise _common.ManualDataError(f"ucf101: missing {', '.join(missing)}. {_INSTRUCTIONS.strip()}")
    classes = read_class_index(needed["classInd.txt"])
    self.info.features["label"].names = classes
    index = self._index_videos(root)
    return {
        "train": self._generate_examples(read_split_list(needed[f"trainlist0{cfg.fold}.txt"]), index, classes),
        "test": self._generate_examples(read_split_list(needed[f"testlist0{cfg.fold}.txt"]), index, classes),
    }

  def _index_videos(self, root: str) -> dict[str, str]:
    """Maps lower-cased clip file names to paths, searching `UCF-101/`, `UCF101/` (any depth), else manual_dir."""
    bases = [os.path.join(root, d) for d in VIDEO_DIRS if os.path.isdir(os.path.join(root, d))] or [root]
    index = {}
    for base in bases:
      for dirpath, _, files in os.walk(base):
        for name in files:
          if name.lower().endswith(".avi"):
            index.setdefault(name.lower(), os.path.join(dirpath, name))
    if not index:
      raise _common.ManualDataError(f"ucf101: no .avi clips under {bases}. {_INSTRUCTIONS.strip()}")
    return index

  def _generate_examples(self, entries: list[str], index: dict[str, str], classes: list[str]):
    cfg = self.builder_config
    # classInd says "HandstandPushups" where the clips say "HandStandPushups": match class names case-blind.
    class_ids = {name.lower(): i for i, name in enumerate(classes)}
    jobs = []
    for entry in entries:
      class_name, file_name = entry.replace("\\", "/").split("/")[-2:]
      if class_name.lower() not in class_ids:
        self.skip_log.skip(entry, f"class {class_name!r} is not in classInd.txt")
      elif file_name.lower() not in index:
        self.skip_log.skip(entry, "listed in the split file but not found in manual_dir")
      else:
        jobs.append((entry, index[file_name.lower()], class_ids[class_name.lower()]))
    by_path = {path: (entry, label) for entry, path, label in jobs}

    def decode(path):
      return video_io.decode_video(path, resolution=cfg.resolution, max_frames=cfg.max_frames)

    for path, out in _common.decode_in_order([p for _, p, _ in jobs], decode, cfg.decode_workers):
      entry, label = by_path[path]
      frames = _common.usable_frames(self.skip_log, path, out, cfg.min_frames, cfg.keep_partial)
      if frames is not None:
        yield entry, {"video": frames, "label": np.int64(label), "path": entry}
