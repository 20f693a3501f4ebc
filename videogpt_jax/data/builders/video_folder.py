"""Any folder of videos (`.mp4`, `.avi`, `.webm`, `.gif`, ...) as a TFDS dataset, decoded with ffmpeg.

Layout of manual_dir:
  - `train/`, `test/` (and/or `validation/`) sub-folders become splits; otherwise everything is one `train` split;
  - inside a split, the first sub-folder level names the class (`<split>/<class>/**/clip.mp4`); clips directly in
    the split folder get the class named after that folder. Class names are sorted over all splits.
Frames are resized on build (shorter side to `resolution`, centre crop) so every example has the same frame size.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from videogpt_jax.data import video_io
from videogpt_jax.data.builders import _common

SPLIT_DIRS = ("train", "validation", "test")

_INSTRUCTIONS = """
Point manual_dir at a folder of videos (.mp4/.avi/.webm/.gif/.mkv/.mov): either `<manual_dir>/<class>/*.mp4`
(one `train` split, labels from sub-folder names) or `<manual_dir>/{train,test}/<class>/*.mp4`.
"""


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
  """How clips are resized/limited on build."""
  resolution: int = 64
  min_frames: int = 16
  max_frames: int | None = None
  keep_partial: bool = False  # keep (and list in skipped_inputs.json) clips whose decode ended early; else skip
  fps: float | None = None
  decode_workers: int = 0


def _configs() -> list[VideoFolderConfig]:
  return [VideoFolderConfig(name=f"res{res}", description=f"{res}x{res} frames.", resolution=res)
          for res in (64, 128, 256)]


def find_videos(root: str) -> dict[str, list[tuple[str, str]]]:
  """Returns `{split: [(relative_path, class_name), ...]}` for the videos under `root` (sorted)."""
  subdirs = [d for d in SPLIT_DIRS if os.path.isdir(os.path.join(root, d))]
  split_roots = {d: os.path.join(root, d) for d in subdirs} or {"train": root}
  found = {}
  for split, split_root in split_roots.items():
    items = []
    for dirpath, dirnames, files in os.walk(split_root):
      dirnames.sort()
      rel_dir = os.path.relpath(dirpath, split_root)
      class_name = os.path.basename(os.path.normpath(split_root)) if rel_dir == "." else rel_dir.split(os.sep)[0]
      for name in sorted(files):
        if name.lower().endswith(video_io.VIDEO_EXTENSIONS):
          items.append((os.path.relpath(os.path.join(dirpath, name), root), class_name))
    found[split] = items
  return found


class VideoFolder(_common.SkipLogMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Videos from a local folder, labels from sub-folder names."""

  name = "video_folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Local folder of videos decoded with the imageio-ffmpeg binary."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  BUILDER_CONFIGS = _configs()
  DEFAULT_CONFIG_NAME = "res64"

  def _info(self) -> tfds.core.DatasetInfo:
    res = self.builder_config.resolution
    return tfds.core.DatasetInfo(
        builder=self,
        description="A local folder of videos, resized (shorter side) and centre-cropped on build.",
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Video((None, res, res, 3)),
            "label": tfds.features.ClassLabel(),  # names come from the folder tree in _split_generators.
            "path": tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = _common.manual_path(dl_manager, self.name, _INSTRUCTIONS)
    found = find_videos(root)
    if not any(found.values()):
      raise _common.ManualDataError(f"video_folder: no video files under {root}. {_INSTRUCTIONS.strip()}")
    classes = sorted({c for items in found.values() for _, c in items})
    self.info.features["label"].names = classes
    return {split: self._generate_examples(root, items, classes) for split, items in found.items()}

  def _generate_examples(self, root: str, items: list[tuple[str, str]], classes: list[str]):
    cfg = self.builder_config
    labels = {rel: classes.index(c) for rel, c in items}

    def decode(rel):
      return video_io.decode_video(os.path.join(root, rel), resolution=cfg.resolution,
                                   max_frames=cfg.max_frames, fps=cfg.fps)

    for rel, out in _common.decode_in_order([rel for rel, _ in items], decode, cfg.decode_workers):
      frames = _common.usable_frames(self.skip_log, os.path.join(root, rel), out, cfg.min_frames, cfg.keep_partial)
      if frames is not None:
        yield rel, {"video": frames, "label": np.int64(labels[rel]), "path": rel}
