"""BAIR robot pushing (Ebert et al. 2017), 64x64 version, built from the original tar or its extracted TFRecords.

Each record of `softmotion30_44k/{train,test}/*.tfrecords` is a `tf.train.Example` holding 30 time steps under
keys `{i}/image_aux1/encoded` (raw 64*64*3 uint8 bytes, not PNG), `{i}/image_main/encoded`, `{i}/action` (4
floats) and `{i}/endeffector_pos` (3 floats). VideoGPT trains on the `image_aux1` camera. The tar (~30 GB) is
streamed member by member, so it need not be extracted.
"""

from __future__ import annotations

import os
import struct
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from videogpt_jax.data.builders import _common

FRAMES_PER_VIDEO = 30
FRAME_SHAPE = (64, 64, 3)
TAR_NAME = "bair_robot_pushing_dataset_v0.tar"
CAMERA = "image_aux1"

_INSTRUCTIONS = f"""
Download http://rail.eecs.berkeley.edu/datasets/{TAR_NAME} and place it in manual_dir, i.e.
`<manual_dir>/{TAR_NAME}` (streamed, no need to extract), or extract it so that
`<manual_dir>/softmotion30_44k/train/*.tfrecords` and `<manual_dir>/softmotion30_44k/test/*.tfrecords` exist.
"""


class TruncatedRecordError(IOError):
  """A TFRecord file ends in the middle of a record."""


def read_tfrecords(f: BinaryIO) -> Iterator[bytes]:
  """Yields the payloads of a TFRecord stream (length, crc, data, crc framing; CRCs are not checked).

  Raises:
    TruncatedRecordError: the stream ends inside a record.
  """
  while True:
    header = f.read(12)
    if not header:
      return
    if len(header) < 12:
      raise TruncatedRecordError(f"stream ends inside a record header ({len(header)} of 12 bytes)")
    (length,) = struct.unpack("<Q", header[:8])
    payload = f.read(length)
    footer = f.read(4)
    if len(payload) < length or len(footer) < 4:
      raise TruncatedRecordError(f"stream ends inside a record ({len(payload)} of {length} bytes)")
    yield payload


def parse_trajectory(record: bytes) -> dict[str, np.ndarray]:
  """Parses one BAIR `tf.train.Example` into `video (30, 64, 64, 3)`, `action (30, 4)`, `endeffector_pos (30, 3)`.

  Raises:
    ValueError: a key is missing or a frame/vector has the wrong size.
  """
  feature = tf.train.Example.FromString(record).features.feature
  frames, actions, positions = [], [], []
  for i in range(FRAMES_PER_VIDEO):
    image_key, action_key, pos_key = f"{i}/{CAMERA}/encoded", f"{i}/action", f"{i}/endeffector_pos"
    for key in (image_key, action_key, pos_key):
      if key not in feature:
        raise ValueError(f"missing key {key!r}")
    raw = feature[image_key].bytes_list.value
    if len(raw) != 1 or len(raw[0]) != np.prod(FRAME_SHAPE):
      raise ValueError(f"{image_key} holds {sum(map(len, raw))} bytes, expected {np.prod(FRAME_SHAPE)} "
                       f"(raw {FRAME_SHAPE} uint8)")
    frames.append(np.frombuffer(raw[0], np.uint8).reshape(FRAME_SHAPE))
    action = np.asarray(feature[action_key].float_list.value, np.float32)
    pos = np.asarray(feature[pos_key].float_list.value, np.float32)
    if action.shape != (4,) or pos.shape != (3,):
      raise ValueError(f"frame {i}: action {action.shape} / endeffector_pos {pos.shape}, expected (4,) / (3,)")
    actions.append(action)
    positions.append(pos)
  return {"video": np.stack(frames), "action": np.stack(actions), "endeffector_pos": np.stack(positions)}


class Bair(_common.SkipLogMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """BAIR robot pushing, 30-frame 64x64 `image_aux1` trajectories with actions."""

  name = "bair"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Local build from the manual tar / TFRecords (image_aux1 camera)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="BAIR robot pushing, image_aux1 camera, 30 frames of 64x64 per trajectory.",
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Video((FRAMES_PER_VIDEO, *FRAME_SHAPE)),
            "action": tfds.features.Tensor(shape=(FRAMES_PER_VIDEO, 4), dtype=np.float32),
            "endeffector_pos": tfds.features.Tensor(shape=(FRAMES_PER_VIDEO, 3), dtype=np.float32),
        }),
        homepage="https://sites.google.com/view/sna-visual-mpc/",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = _common.manual_path(dl_manager, self.name, _INSTRUCTIONS)
    tar_path = os.path.join(root, TAR_NAME)
    extracted = [os.path.join(root, "softmotion30_44k"), root]
    for base in extracted:
      if os.path.isdir(os.path.join(base, "train")) and os.path.isdir(os.path.join(base, "test")):
        return {split: self._generate_examples(os.path.join(base, split), split) for split in ("train", "test")}
    if os.path.isfile(tar_path):
      return {split: self._generate_examples(tar_path, split) for split in ("train", "test")}
    raise _common.ManualDataError(f"bair: found neither {tar_path} nor {extracted[0]}/{{train,test}}/. "
                                  f"{_INSTRUCTIONS.strip()}")

  def _generate_examples(self, path: str, split: str):
    if os.path.isdir(path):
      yield from self._generate_from_dir(path)
    else:
      yield from self._generate_from_tar(path, split)

  def _records(self, source: str, f: BinaryIO):
    try:
      yield from enumerate(read_tfrecords(f))
    except TruncatedRecordError as e:
      self.skip_log.skip(source, f"truncated TFRecord file, rest skipped: {e}")

  def _examples(self, source: str, f: BinaryIO):
    for i, record in self._records(source, f):
      try:
        example = parse_trajectory(record)
      except Exception as e:  # pylint: disable=broad-except
        # A corrupt proto raises DecodeError; a wrong size ValueError: either way skip the one trajectory.
        self.skip_log.skip(f"{source}#{i}", f"bad trajectory: {e}")
        continue
      yield f"{os.path.basename(source)}_{i}", example

  def _generate_from_dir(self, split_dir: str):
    files = sorted(n for n in os.listdir(split_dir) if n.endswith(".tfrecords"))
    if not files:
      raise _common.ManualDataError(f"bair: no *.tfrecords in {split_dir}. {_INSTRUCTIONS.strip()}")
    for name in files:
      path = os.path.join(split_dir, name)
      with open(path, "rb") as f:
        yield from self._examples(path, f)

  def _generate_from_tar(self, tar_path: str, split: str):
    prefix = f"softmotion30_44k/{split}/"
    try:
      with tarfile.open(tar_path, "r|*") as tar:
        for member in tar:
          name = member.name.lstrip("./")
          if member.isfile() and name.startswith(prefix) and name.endswith(".tfrecords"):
            yield from self._examples(f"{tar_path}:{name}", tar.extractfile(member))
    except (tarfile.TarError, EOFError) as e:
      self.skip_log.skip(tar_path, f"unreadable tar, rest of {split} skipped: {e}")
