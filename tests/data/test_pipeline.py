"""tf.data pipelines on a simulated 8-device mesh: shapes, values, labels, determinism, resumption, per-process
shards and exact-once evaluation."""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.data import conftest as data
from videogpt_jax.data import builders, pipeline


def _np(batch):
  return {k: np.asarray(v) for k, v in batch.items()}


def _bair_ids(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Trajectory id and frame index per clip and frame, read back from the marker pixel of `bair_frame`."""
  marker = np.rint((video[..., 0, 0, :] + 0.5) * 255).astype(int)  # (B, T, 3)
  return marker[:, 0, 1], marker[..., 0] // 4


@pytest.fixture(scope="module")
def batch_sharding(mesh):
  return NamedSharding(mesh, P("data"))


def test_bair_train_batches_on_mesh(bair_builder, batch_sharding):
  it = pipeline.make_train_iterator(bair_builder, global_batch_size=8, sharding=batch_sharding, seq_len=16,
                                    resolution=64, seed=0, n_cond_frames=2)
  batch = next(it)
  assert set(batch) == {"video", "cond_frames"}  # BAIR has no class labels.
  video = batch["video"]
  assert isinstance(video, jax.Array) and video.shape == (8, 16, 64, 64, 3) and video.dtype == np.float32
  assert video.sharding == batch_sharding
  assert [s.data.shape for s in video.addressable_shards] == [(1, 16, 64, 64, 3)] * 8
  video = np.asarray(video)
  assert video.min() >= -0.5 and video.max() <= 0.5
  np.testing.assert_array_equal(np.asarray(batch["cond_frames"]), video[:, :2])
  traj, frame = _bair_ids(video)
  assert len(set(traj)) == 8 and set(traj) <= set(range(data.BAIR_TRAIN)) | {201}
  for b in range(8):
    start = frame[b, 0]
    assert 0 <= start <= 30 - 16
    np.testing.assert_array_equal(frame[b], np.arange(start, start + 16))
    # The whole window is the stored trajectory, scaled to [-0.5, 0.5] exactly as the original does.
    want = np.stack([data.bair_frame(traj[b], t) for t in range(start, start + 16)]).astype(np.float32)
    np.testing.assert_allclose(video[b], want / 255.0 - 0.5, atol=1e-6)


def test_train_is_deterministic_under_seed(mnist_builder, batch_sharding):
  def first(seed, n=3):
    it = pipeline.make_train_iterator(mnist_builder, global_batch_size=8, sharding=batch_sharding, seq_len=16,
                                      resolution=64, seed=seed)
    return [np.asarray(next(it)["video"]) for _ in range(n)]
  a, b, c = first(0), first(0), first(1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not all(np.array_equal(x, z) for x, z in zip(a, c))
  # Grayscale digits tiled to RGB.
  np.testing.assert_array_equal(a[0][..., 0], a[0][..., 2])
  assert a[0].shape == (8, 16, 64, 64, 3)


def test_resume_from_state_equals_uninterrupted(mnist_builder, batch_sharding):
  kwargs = dict(global_batch_size=8, sharding=batch_sharding, seq_len=16, resolution=64, seed=3)
  it = pipeline.make_train_iterator(mnist_builder, **kwargs)
  assert it.steps_per_epoch == 4
  full = [np.asarray(next(it)["video"]) for _ in range(11)]
  # Interrupted at step 6 (epoch 1, 2 batches in); the state goes through JSON as the trainer stores it.
  it = pipeline.make_train_iterator(mnist_builder, **kwargs)
  for _ in range(6):
    next(it)
  state = json.loads(json.dumps(it.state()))
  assert state["step"] == 6
  resumed = pipeline.make_train_iterator(mnist_builder, start_step=state["step"], **kwargs)
  restored = pipeline.make_train_iterator(mnist_builder, **kwargs).restore(state)
  for step in range(6, 11):
    np.testing.assert_array_equal(np.asarray(next(resumed)["video"]), full[step])
    np.testing.assert_array_equal(np.asarray(next(restored)["video"]), full[step])
  # Epochs reshuffle: epoch 0 and epoch 1 differ.
  assert not np.array_equal(full[0], full[4])
  with pytest.raises(ValueError, match="seed"):
    pipeline.make_train_iterator(mnist_builder, **{**kwargs, "seed": 4}).restore(state)


def test_epoch_visits_each_example_once(bair_builder):
  it = pipeline.make_train_iterator(bair_builder, global_batch_size=4, sharding=None, seq_len=16, resolution=64,
                                    seed=0)
  assert it.steps_per_epoch == 3  # 13 trajectories, drop_remainder.
  for _ in range(2):
    ids = np.concatenate([_bair_ids(next(it)["video"])[0] for _ in range(3)])
    assert len(set(ids)) == 12


def test_processes_see_disjoint_shards(bair_builder):
  seen = []
  for index in range(2):
    it = pipeline.make_train_iterator(bair_builder, global_batch_size=4, sharding=None, seq_len=16, resolution=64,
                                      seed=0, process_index=index, process_count=2)
    assert it.local_batch_size == 2
    ids = np.concatenate([_bair_ids(next(it)["video"])[0] for _ in range(it.steps_per_epoch)])
    assert len(set(ids)) == len(ids) == 6  # 13 // 2 per process, drop_remainder.
    seen.append(set(ids))
  assert not seen[0] & seen[1]
  assert pipeline.split_for_process("train", process_index=0, process_count=2) != \
      pipeline.split_for_process("train", process_index=1, process_count=2)


def test_eval_covers_split_once_with_mask(bair_builder, batch_sharding):
  ev = pipeline.make_eval_iterator(bair_builder, split="test", global_batch_size=8, sharding=batch_sharding,
                                   seq_len=16, resolution=64)
  batches = [_np(b) for b in ev]
  assert len(batches) == len(ev) == 1
  mask = batches[0]["mask"]
  assert mask.dtype == bool and mask.shape == (8,) and mask.sum() == data.BAIR_TEST
  traj, frame = _bair_ids(batches[0]["video"][mask])
  assert sorted(traj) == list(range(100, 100 + data.BAIR_TEST))
  assert (frame[:, 0] == 0).all()  # Eval windows are fixed: the first 16 frames.
  # Two simulated processes: equal batch counts, and together every example exactly once.
  per_process = []
  for index in range(2):
    ev = pipeline.make_eval_iterator(bair_builder, split="test", global_batch_size=4, sharding=None, seq_len=16,
                                     process_index=index, process_count=2)
    batches = list(ev)
    assert len(batches) == 2  # ceil(ceil(5 / 2) / 2)
    per_process.append(np.concatenate([_bair_ids(b["video"][b["mask"]])[0] for b in batches]))
  assert sorted(np.concatenate(per_process)) == list(range(100, 100 + data.BAIR_TEST))


def test_ucf_labels_through_pipeline(ucf_builder, batch_sharding):
  it = pipeline.make_train_iterator(ucf_builder, global_batch_size=2, sharding=None, seq_len=16, resolution=32,
                                    seed=0)
  assert it.steps_per_epoch == 3
  train_labels = []
  for _ in range(3):
    batch = next(it)
    assert batch["video"].shape == (2, 16, 32, 32, 3)
    np.testing.assert_array_equal(np.argmax(batch["video"].mean(axis=(1, 2, 3)), -1), batch["label"])
    train_labels += list(batch["label"])
  assert sorted(train_labels) == [0, 0, 1, 1, 2, 2]
  ev = pipeline.make_eval_iterator(ucf_builder, split="train", global_batch_size=8, sharding=batch_sharding,
                                   seq_len=16, resolution=32)
  batch = _np(next(iter(ev)))
  assert batch["label"].dtype == np.int32 and batch["video"].shape == (8, 16, 32, 32, 3)
  mask = batch["mask"]
  assert mask.sum() == 6
  colour = batch["video"][mask].mean(axis=(1, 2, 3))
  np.testing.assert_array_equal(np.argmax(colour, -1), batch["label"][mask])
  assert sorted(batch["label"][mask]) == [0, 0, 1, 1, 2, 2]


def test_video_folder_custom_preprocess(folder_builder):
  spec = "random_window(8)|decode_video|random_crop(24)|flip_lr|value_range(-1,1)"
  it = pipeline.make_train_iterator(folder_builder, global_batch_size=4, sharding=None, seed=0, preprocess=spec)
  batch = next(it)
  assert batch["video"].shape == (4, 8, 24, 24, 3) and batch["label"].shape == (4,)
  assert batch["video"].min() >= -1 and batch["video"].max() <= 1 and batch["video"].min() < -0.5


def test_bad_batch_sizes(mnist_builder, batch_sharding):
  with pytest.raises(ValueError, match="must be divisible by the mesh.s data = "):
    pipeline.make_train_iterator(mnist_builder, global_batch_size=4, sharding=batch_sharding)
  with pytest.raises(ValueError, match="divisible by process_count"):
    pipeline.make_train_iterator(mnist_builder, global_batch_size=5, sharding=None, process_count=2,
                                 process_index=0)
  with pytest.raises(ValueError, match="fewer than the global batch"):
    pipeline.make_train_iterator(mnist_builder, global_batch_size=64, sharding=None)


def test_eval_every_window_once(bair_builder):
  pairs = []
  for index in range(2):
    ev = pipeline.make_eval_iterator(bair_builder, split="test", global_batch_size=4, sharding=None, seq_len=16,
                                     window_stride=7, process_index=index, process_count=2)
    assert len(ev) == 5  # 3 + 2 trajectories per process, 3 windows (starts 0, 7, 14) each, 2 per local batch.
    for batch in ev:
      traj, frame = _bair_ids(batch["video"][batch["mask"]])
      for t, f in zip(traj, frame):
        np.testing.assert_array_equal(f, np.arange(f[0], f[0] + 16))
        pairs.append((int(t), int(f[0])))
  assert sorted(pairs) == [(t, s) for t in range(100, 100 + data.BAIR_TEST) for s in (0, 7, 14)]


def _global_batches(its, n):
  """The next `n` global batches of simulated processes `its`: their local batches concatenated."""
  return [np.concatenate([next(it)["video"] for it in its]) for _ in range(n)]


def _processes(builder, count, **kwargs):
  return [pipeline.make_train_iterator(builder, sharding=None, process_index=i, process_count=count, **kwargs)
          for i in range(count)]


@pytest.mark.parametrize("resume_count", [1, 4])
def test_resume_on_another_process_count_equals_uninterrupted(mnist_builder, resume_count):
  """Saved by 2 processes at step 6 (epoch 1, 2 batches in), resumed by 1 or 4: the same global batches."""
  kwargs = dict(global_batch_size=8, seq_len=4, resolution=16, seed=3)
  full = _global_batches(_processes(mnist_builder, 1, **kwargs), 11)
  assert not np.array_equal(full[0], full[4])  # epochs reshuffle
  its = _processes(mnist_builder, 2, **kwargs)
  before = _global_batches(its, 6)
  state = json.loads(json.dumps(its[0].state()))  # as the trainer stores it
  assert state["step"] == 6 and state["process_count"] == 2
  after = [it.restore(state) for it in _processes(mnist_builder, resume_count, **kwargs)]
  for step, batch in enumerate(before + _global_batches(after, 5)):
    np.testing.assert_array_equal(batch, full[step], err_msg=f"step {step}")


def test_resume_reads_only_what_is_left(mnist_builder):
  """Resuming at the last batch of an epoch reads that batch's examples, not the epoch before it."""
  it = pipeline.make_train_iterator(mnist_builder, global_batch_size=8, sharding=None, seq_len=4, resolution=16,
                                    seed=3, process_index=1, process_count=2)
  reads = []

  class Counting:
    def __init__(self, source):
      self.source = source

    def __len__(self):
      return len(self.source)

    def __getitem__(self, i):
      reads.append(i)
      return self.source[i]

  it.source = Counting(it.source)
  last = it.steps_per_epoch - 1
  it.restore(dict(it.state(), step=last))
  batch = next(it)
  indices, positions = it.epoch_positions(0, last)
  assert sorted(reads) == sorted(indices.tolist()) and len(reads) == it.local_batch_size == 4
  np.testing.assert_array_equal(positions, last * 8 + 4 + np.arange(4))
  assert batch["video"].shape == (4, 4, 16, 16, 3)


@pytest.mark.slow
def test_tfrecord_dataset_is_a_clear_error(tmp_path):
  """A dataset directory written as TFRecord files names itself and says how to rebuild; nothing is deleted."""
  old = builders.BUILDERS["moving_mnist"](data_dir=str(tmp_path), config="tiny", file_format="tfrecord")
  old.download_and_prepare()
  files = sorted(p.name for p in pathlib.Path(old.data_dir).iterdir())
  with pytest.raises(ValueError, match=r"moving_mnist: .* stored as tfrecord files.*data.build --dataset="):
    builders.load_builder("moving_mnist", tmp_path, config="tiny")
  assert sorted(p.name for p in pathlib.Path(old.data_dir).iterdir()) == files
