"""TFDS builders on files in the real formats: shapes, contents, labels, skipped bad input, missing manual data."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest

from tests.data import conftest as data
from videogpt_jax.data import builders
from videogpt_jax.data.builders import moving_mnist


def _examples(builder, split):
  # The numpy decoder returns a video as a list of frames.
  return [{k: np.stack(v) if isinstance(v, list) else v for k, v in ex.items()}
          for ex in builder.as_data_source(split)]


# ---------------------------------------------------------------- BAIR ----
def test_bair_contents_and_skips(bair_builder):
  assert bair_builder.info.splits["train"].num_examples == data.BAIR_TRAIN + 1  # + the good record before a cut.
  assert bair_builder.info.splits["test"].num_examples == data.BAIR_TEST
  reasons = sorted(reason.split(":")[0] for _, reason in bair_builder.skipped)
  assert reasons == ["bad trajectory", "bad trajectory", "truncated TFRecord file, rest skipped"]
  for ex in _examples(bair_builder, "test"):
    traj = int(ex["video"][0, 0, 0, 1])
    assert ex["video"].shape == (30, 64, 64, 3) and ex["video"].dtype == np.uint8
    np.testing.assert_array_equal(ex["video"], np.stack([data.bair_frame(traj, t) for t in range(30)]))
    np.testing.assert_array_equal(ex["action"][:, :2], np.stack([np.full(30, traj), np.arange(30)], 1))
    assert ex["endeffector_pos"].shape == (30, 3)


def test_bair_from_tar_equals_extracted(tmp_path, bair_manual, bair_builder):
  tar_dir = tmp_path / "manual"
  tar_dir.mkdir()
  with tarfile.open(tar_dir / "bair_robot_pushing_dataset_v0.tar", "w") as tar:
    tar.add(bair_manual / "softmotion30_44k", arcname="softmotion30_44k")
  from_tar = builders.load_builder("bair", tmp_path / "tfds", manual_dir=tar_dir)
  assert from_tar.skipped_count == 3
  for split in ("train", "test"):
    a = sorted(ex["video"].tobytes() for ex in _examples(from_tar, split))
    b = sorted(ex["video"].tobytes() for ex in _examples(bair_builder, split))
    assert a == b


@pytest.mark.parametrize("name", ["bair", "ucf101", "video_folder"])
def test_missing_manual_dir_is_one_clear_error(tmp_path, name):
  with pytest.raises(builders.ManualDataError, match="manual directory"):
    builders.load_builder(name, tmp_path / "tfds", manual_dir=tmp_path / "nowhere")


def test_ucf_missing_split_lists_named(tmp_path):
  (tmp_path / "manual" / "UCF-101").mkdir(parents=True)
  with pytest.raises(builders.ManualDataError, match="classInd.txt"):
    builders.load_builder("ucf101", tmp_path / "tfds", manual_dir=tmp_path / "manual")


def test_unknown_names():
  with pytest.raises(ValueError, match="Unknown dataset"):
    builders.get_builder("kinetics", "/tmp/none")
  with pytest.raises(ValueError, match="Unknown config"):
    builders.get_builder("ucf101", "/tmp/none", config="fold4_64")


# ---------------------------------------------------------------- UCF-101 ----
def test_ucf_labels_resize_and_skips(ucf_builder, ucf_manual):
  _, expected = ucf_manual
  assert ucf_builder.info.features["label"].names == data.UCF_CLASSES
  assert ucf_builder.info.splits["train"].num_examples == 6
  assert ucf_builder.info.splits["test"].num_examples == 3
  skipped = {path.rsplit("/", 1)[-1]: reason for path, reason in ucf_builder.skipped}
  assert set(skipped) == {"v_YoYo_g04_c01.avi", "v_YoYo_g05_c01.avi", "v_YoYo_g06_c01.avi"}
  assert "undecodable" in skipped["v_YoYo_g04_c01.avi"]
  assert "fewer than min_frames" in skipped["v_YoYo_g05_c01.avi"]
  assert "not found" in skipped["v_YoYo_g06_c01.avi"]
  for split in ("train", "test"):
    for ex in _examples(ucf_builder, split):
      path = ex["path"].decode()
      assert ex["label"] == expected[path]
      assert ex["video"].shape == (20, 32, 32, 3)
      # The colour written for class k survives Xvid and the resize: channel k is the bright one.
      assert int(np.argmax(ex["video"].reshape(-1, 3).mean(0))) == ex["label"]
  test_paths = {ex["path"].decode() for ex in _examples(ucf_builder, "test")}
  assert all("_g01_" in p for p in test_paths)


# ---------------------------------------------------------------- video folder ----
def test_video_folder_real_clips(folder_builder):
  assert folder_builder.info.features["label"].names == ["outdoor", "phone"]
  examples = {ex["path"].decode(): ex for ex in _examples(folder_builder, "train")}
  assert set(examples) == {"outdoor/bikes.mp4", "outdoor/bigbuckbunny.mp4", "phone/carphone_distorted.mp4",
                           "phone/carphone_pristine.mp4", "phone/anim.gif"}
  for path, ex in examples.items():
    assert ex["video"].shape == (20, 32, 32, 3)
    assert ex["label"] == (0 if path.startswith("outdoor") else 1)
    assert ex["video"].std() > 5  # Real picture content, not a blank decode.
  assert [p.rsplit("/", 1)[-1] for p, _ in folder_builder.skipped] == ["truncated.mp4"]


# ---------------------------------------------------------------- Moving MNIST ----
def test_moving_mnist_pools_are_disjoint_real_digits():
  pools = moving_mnist.digit_pools()
  train, test = pools["train"][0], pools["test"][0]
  assert train.shape == (4000, 28, 28) and test.shape == (1000, 28, 28)
  assert not {d.tobytes() for d in train} & {d.tobytes() for d in test}
  assert set(np.unique(pools["train"][1])) == set(range(10))


def test_moving_mnist_generator_physics():
  pools = moving_mnist.digit_pools()
  digits, labels = pools["train"]
  rng = np.random.default_rng(3)
  for _ in range(20):
    traj = moving_mnist.bouncing_trajectory(rng, 40)
    assert traj.min() >= 0 and traj.max() <= 64 - 28
    steps = np.abs(np.diff(traj, axis=0))
    assert steps.max() <= 5 and steps.sum() > 0  # 0.1 of the 36-pixel free range per frame, with rounding.
  video, chosen = moving_mnist.generate_sequence(digits, labels, np.random.default_rng(0), 20)
  assert video.shape == (20, 64, 64, 1) and video.dtype == np.uint8 and chosen.shape == (2,)
  assert video.max() == 255 and (video > 0).mean() < 0.5


def test_moving_mnist_canvas():
  digits, labels = moving_mnist.digit_pools()["train"]
  rng = np.random.default_rng(5)
  for _ in range(20):
    traj = moving_mnist.bouncing_trajectory(rng, 40, canvas=40)
    assert traj.min() >= 0 and traj.max() <= 40 - 28 and traj.max() >= 6  # it moves over the 12-pixel range
  video, _ = moving_mnist.generate_sequence(digits, labels, np.random.default_rng(0), 16, 1, canvas=40)
  assert video.shape == (16, 40, 40, 1) and video.max() == 255
  with pytest.raises(ValueError, match="canvas=28 leaves no room"):
    moving_mnist.generate_sequence(digits, labels, rng, 4, 1, canvas=28)
  config = {c.name: c for c in moving_mnist.MovingMnist.BUILDER_CONFIGS}["one_digit_close"]
  assert (config.canvas, config.n_digits, config.seq_len) == (40, 1, 16)


def test_moving_mnist_built_deterministic(mnist_builder, tmp_path):
  assert mnist_builder.info.splits["train"].num_examples == 32
  assert mnist_builder.info.splits["test"].num_examples == 16
  first = _examples(mnist_builder, "test")
  pools = moving_mnist.digit_pools()
  regenerated = moving_mnist.generate_sequence(*pools["test"], np.random.default_rng((0, 1, 0)), 20)
  by_key = {ex["video"].tobytes(): ex for ex in first}
  assert regenerated[0].tobytes() in by_key
  # The last frame's digits are test-pool digits: each digit crop appears in the test pool only.
  train_videos = {ex["video"].tobytes() for ex in _examples(mnist_builder, "train")}
  assert not train_videos & set(by_key)


def test_moving_mnist_official_file(tmp_path):
  seq = np.random.default_rng(0).integers(0, 256, (20, 3, 64, 64), dtype=np.uint8)
  (tmp_path / "manual").mkdir()
  np.save(tmp_path / "manual" / moving_mnist.OFFICIAL_FILE, seq)
  builder = builders.load_builder("moving_mnist", tmp_path / "tfds", manual_dir=tmp_path / "manual",
                                  config="official")
  got = sorted((ex["video"] for ex in _examples(builder, "test")), key=lambda v: v.tobytes())
  want = sorted((seq[:, i, :, :, None] for i in range(3)), key=lambda v: v.tobytes())
  np.testing.assert_array_equal(np.stack(got), np.stack(want))
