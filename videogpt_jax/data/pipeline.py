"""tf.data input pipelines yielding global sharded `jax.Array` batches, resumable at any step.

Train: each process reads its own slice of the split (`tfds.split_for_jax_process`), epoch by epoch. Epoch `e`
shuffles files and examples with a seed derived from `(seed, e)`, and every example carries a stateless seed
`(hash(seed, e, process), position in epoch)` for its random ops (window start, crop, flip). A batch is therefore a
pure function of the step number: resuming at step `n` re-reads epoch `n // steps_per_epoch`, skips the batches
already seen (before decoding, so skipping is cheap) and yields exactly what an uninterrupted run would.
The batches of one epoch never straddle the next (`drop_remainder`), so steps_per_epoch is fixed.

Eval: one pass over the whole split in file order, fixed windows, the last batch padded with zeros and
`mask=False`; every process yields the same number of batches (needed for global arrays).

Batches are dicts: `video (B, T, H, W, 3)` float32 in [-0.5, 0.5], `label (B,)` int32 when the dataset has
labels, `cond_frames (B, n_cond_frames, H, W, 3)` when `n_cond_frames > 0`, and `mask (B,)` bool for eval. With
`sharding=None` they are process-local numpy arrays instead of global `jax.Array`s.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from videogpt_jax.data import builders as builders_lib
from videogpt_jax.data import preprocess_ops

BuilderArg = str | tfds.core.DatasetBuilder
_OUTPUT_KEYS = ("video", "label", "cond_frames", "mask")


def default_preprocess(seq_len: int, resolution: int, *, train: bool, n_cond_frames: int = 0) -> str:
  """The VideoGPT preprocessing as an op string: a window, shorter side resize, centre crop, RGB, [-0.5, 0.5]."""
  window = f"random_window({seq_len})" if train else f"fixed_window({seq_len})"
  spec = (f"{window}|decode_video|resize_smaller({resolution})|center_crop({resolution})|gray_to_rgb|"
          "value_range(-0.5,0.5)")
  if n_cond_frames:
    spec += f"|cond_frames({n_cond_frames})"
  return spec


def split_for_process(split: str, *, process_index: int | None = None, process_count: int | None = None,
                      drop_remainder: bool = False) -> Any:
  """This process's disjoint slice of `split` (defaults: `jax.process_index()` of `jax.process_count()`)."""
  return tfds.split_for_jax_process(
      split, process_index=jax.process_index() if process_index is None else process_index,
      process_count=jax.process_count() if process_count is None else process_count,
      drop_remainder=drop_remainder)


def _builder(builder: BuilderArg, data_dir, config, manual_dir) -> tfds.core.DatasetBuilder:
  if isinstance(builder, tfds.core.DatasetBuilder):
    return builder
  if data_dir is None:
    raise ValueError("data_dir is required when the dataset is given by name")
  return builders_lib.load_builder(builder, data_dir, manual_dir=manual_dir, config=config)


def _mix(*values: int) -> int:
  """A stable (across processes and Python runs) 31-bit hash of integers, for seeding tf.data ops."""
  digest = hashlib.sha256(",".join(str(int(v)) for v in values).encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _local_batch_size(global_batch_size: int, process_count: int, sharding) -> int:
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by process_count={process_count}")
  if sharding is not None:
    if process_count != jax.process_count():
      raise ValueError(f"process_count={process_count} differs from jax.process_count()={jax.process_count()}; "
                       "simulated processes need sharding=None")
    spec = sharding.spec[0] if len(sharding.spec) else None
    axes = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
    shards = math.prod(sharding.mesh.shape[a] for a in axes)
    if global_batch_size % shards:
      raise ValueError(f"global_batch_size={global_batch_size} is not divisible by the {shards} batch shards of "
                       f"{sharding}")
  return global_batch_size // process_count


def _read(builder: tfds.core.DatasetBuilder, split, shuffle_seed: int | None) -> tf.data.Dataset:
  """Raw examples (`video` still encoded, `(T,)` strings) with only the keys the pipeline carries."""
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
                          decoders={"video": tfds.decode.SkipDecoding()})
  has_label = "label" in builder.info.features
  return ds.map(lambda x: {"video": x["video"], **({"label": tf.cast(x["label"], tf.int32)} if has_label else {})})


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def _to_output(batch: dict[str, np.ndarray], sharding) -> dict[str, Any]:
  batch = {k: v for k, v in batch.items() if k in _OUTPUT_KEYS}
  if sharding is None:
    return batch
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


class TrainIterator:
  """Infinite iterator over training batches; `state()` / `restore()` give exact resumption."""

  def __init__(self, builder: tfds.core.DatasetBuilder, *, split: str, global_batch_size: int, sharding,
               preprocess: str, seed: int, start_step: int = 0, shuffle_buffer: int = 2048,
               process_index: int | None = None, process_count: int | None = None):
    self.builder = builder
    self.split = split
    self.seed = int(seed)
    self.global_batch_size = int(global_batch_size)
    self.sharding = sharding
    self.preprocess = preprocess
    self.shuffle_buffer = int(shuffle_buffer)
    self.process_index = jax.process_index() if process_index is None else int(process_index)
    self.process_count = jax.process_count() if process_count is None else int(process_count)
    self.local_batch_size = _local_batch_size(self.global_batch_size, self.process_count, sharding)
    # drop_remainder: every process gets the same number of examples, hence the same steps_per_epoch.
    self.local_split = split_for_process(split, process_index=self.process_index,
                                         process_count=self.process_count, drop_remainder=True)
    self.examples_per_epoch = builder.info.splits[self.local_split].num_examples
    self.steps_per_epoch = self.examples_per_epoch // self.local_batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f"split {split!r} gives {self.examples_per_epoch} examples per process, fewer than the "
                       f"local batch of {self.local_batch_size}")
    self._preprocess_fn = preprocess_ops.get_preprocess_fn(preprocess)
    self._step = int(start_step)
    self._it = None

  def _epoch_dataset(self, epoch: int, skip_batches: int) -> tf.data.Dataset:
    epoch_seed = _mix(self.seed, epoch, self.process_index)
    ds = _read(self.builder, self.local_split, shuffle_seed=epoch_seed)
    ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    ds = ds.enumerate().skip(skip_batches * self.local_batch_size)

    def prepare(index, example):
      example = dict(example, _seed=tf.stack([tf.constant(epoch_seed, tf.int64), index]))
      out = self._preprocess_fn(example)
      return {k: v for k, v in out.items() if not k.startswith("_")}

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(self.local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return _deterministic(ds)

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, Any]:
    if self._it is None:
      epoch, within = divmod(self._step, self.steps_per_epoch)
      self._it = iter(tfds.as_numpy(self._epoch_dataset(epoch, within)))
    batch = next(self._it)
    self._step += 1
    if self._step % self.steps_per_epoch == 0:
      self._it = None  # The epoch is spent (drop_remainder); the next call opens the next one.
    return _to_output(batch, self.sharding)

  @property
  def step(self) -> int:
    return self._step

  def state(self) -> dict[str, Any]:
    """JSON-serialisable position: the number of batches already yielded and what they depend on."""
    return {"step": self._step, "seed": self.seed, "split": self.split, "global_batch_size": self.global_batch_size,
            "process_count": self.process_count, "preprocess": self.preprocess,
            "shuffle_buffer": self.shuffle_buffer, "dataset": self.builder.name}

  def restore(self, state: dict[str, Any]) -> TrainIterator:
    """Moves to `state["step"]`; raises ValueError if the state was saved for a different data order."""
    mine = self.state()
    for key in ("seed", "split", "global_batch_size", "process_count", "preprocess", "shuffle_buffer", "dataset"):
      if key in state and state[key] != mine[key]:
        raise ValueError(f"iterator state has {key}={state[key]!r} but this iterator has {mine[key]!r}; "
                         "resuming would change the data order")
    self._step = int(state["step"])
    self._it = None
    return self


def _windowed(ds: tf.data.Dataset, length: int, stride: int) -> tf.data.Dataset:
  """Each example becomes one example per `length`-frame window starting at 0, stride, 2 stride, ..."""
  def expand(example):
    starts = tf.range(0, tf.shape(example["video"])[0] - length + 1, stride)
    return tf.data.Dataset.from_tensor_slices(starts).map(
        lambda s: {**example, "video": example["video"][s:s + length]})
  return ds.flat_map(expand)


def _count_windows(ds: tf.data.Dataset, length: int, stride: int) -> int:
  def n_windows(example):
    n = tf.shape(example["video"])[0] - length
    return tf.cast(tf.where(n >= 0, n // stride + 1, 0), tf.int64)
  return int(ds.map(n_windows).reduce(tf.constant(0, tf.int64), lambda a, b: a + b))


class EvalIterator:
  """One pass over a split, every example exactly once across processes; padded batches carry `mask`.

  With `windows=(length, stride)`, every `length`-frame window at that stride is an example (VideoGPT's UCF-101
  protocol with stride 1); counting them reads the (undecoded) split once at construction.
  """

  def __init__(self, builder: tfds.core.DatasetBuilder, *, split: str, global_batch_size: int, sharding,
               preprocess: str, seed: int = 0, windows: tuple[int, int] | None = None,
               process_index: int | None = None, process_count: int | None = None):
    self.builder = builder
    self.sharding = sharding
    self.seed = int(seed)
    self.windows = windows
    process_index = jax.process_index() if process_index is None else int(process_index)
    process_count = jax.process_count() if process_count is None else int(process_count)
    self.process_index = process_index
    self.local_batch_size = _local_batch_size(global_batch_size, process_count, sharding)
    self.local_split = split_for_process(split, process_index=process_index, process_count=process_count)
    if windows is None:
      per_process = [builder.info.splits[split_for_process(split, process_index=i, process_count=process_count)]
                     .num_examples for i in range(process_count)]
    else:
      per_process = [_count_windows(_read(builder, split_for_process(split, process_index=i,
                                                                      process_count=process_count), None), *windows)
                     for i in range(process_count)]
    self.num_examples = per_process[process_index]
    # Every process must yield as many batches as the largest slice needs.
    self.num_batches = math.ceil(max(per_process) / self.local_batch_size)
    self._preprocess_fn = preprocess_ops.get_preprocess_fn(preprocess)

  def __len__(self) -> int:
    return self.num_batches

  def dataset(self) -> tf.data.Dataset:
    """The padded, batched process-local `tf.data.Dataset`."""
    base_seed = _mix(self.seed, -1, self.process_index)

    def prepare(index, example):
      out = self._preprocess_fn(dict(example, _seed=tf.stack([tf.constant(base_seed, tf.int64), index])))
      out = {k: v for k, v in out.items() if not k.startswith("_")}
      return dict(out, mask=tf.constant(True))

    ds = _read(self.builder, self.local_split, shuffle_seed=None)
    if self.windows is not None:
      ds = _windowed(ds, *self.windows)
    ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if self.num_examples:
      padding = ds.take(1).map(lambda x: {k: tf.zeros_like(v) for k, v in x.items()}).cache().repeat()
      ds = ds.concatenate(padding)
    ds = ds.take(self.num_batches * self.local_batch_size).batch(self.local_batch_size, drop_remainder=True)
    return _deterministic(ds.prefetch(tf.data.AUTOTUNE))

  def __iter__(self):
    if self.num_examples == 0:
      raise ValueError(f"process {self.process_index} has no examples in {self.local_split}; use fewer processes")
    for batch in tfds.as_numpy(self.dataset()):
      yield _to_output(batch, self.sharding)


def make_train_iterator(builder: BuilderArg, *, data_dir: str | os.PathLike | None = None, split: str = "train",
                        global_batch_size: int, sharding, seq_len: int = 16, resolution: int = 64, seed: int = 0,
                        preprocess: str | None = None, n_cond_frames: int = 0, start_step: int = 0,
                        config: str | tfds.core.BuilderConfig | None = None, manual_dir: str | None = None,
                        shuffle_buffer: int = 2048, process_index: int | None = None,
                        process_count: int | None = None) -> TrainIterator:
  """Training batches of `seq_len`-frame random windows at `resolution`, sharded by `sharding` over the batch.

  Args:
    builder: a dataset name from `videogpt_jax.data.builders.BUILDERS` (built in `data_dir` if needed) or a builder.
    sharding: e.g. `NamedSharding(mesh, P(("data", "fsdp")))`; None yields process-local numpy batches.
    preprocess: an op string (see `preprocess_ops`); default `default_preprocess(seq_len, resolution, ...)`.
    n_cond_frames: if > 0, batches also carry `cond_frames`, the first `n_cond_frames` frames of `video`.
    start_step: number of batches already consumed (resume from `TrainIterator.state()["step"]`).
    process_index, process_count: override JAX's (to simulate several hosts with `sharding=None`).
  """
  builder = _builder(builder, data_dir, config, manual_dir)
  preprocess = preprocess or default_preprocess(seq_len, resolution, train=True, n_cond_frames=n_cond_frames)
  return TrainIterator(builder, split=split, global_batch_size=global_batch_size, sharding=sharding,
                       preprocess=preprocess, seed=seed, start_step=start_step, shuffle_buffer=shuffle_buffer,
                       process_index=process_index, process_count=process_count)


def make_eval_iterator(builder: BuilderArg, *, data_dir: str | os.PathLike | None = None, split: str = "test",
                       global_batch_size: int, sharding, seq_len: int = 16, resolution: int = 64, seed: int = 0,
                       preprocess: str | None = None, n_cond_frames: int = 0, window_stride: int | None = None,
                       config: str | tfds.core.BuilderConfig | None = None, manual_dir: str | None = None,
                       process_index: int | None = None, process_count: int | None = None) -> EvalIterator:
  """One padded pass over `split`; arguments as `make_train_iterator`.

  By default each clip gives one example, its first `seq_len` frames. With `window_stride`, each clip gives every
  `seq_len`-frame window starting at multiples of `window_stride` (1: every window, as VideoGPT does for UCF-101).
  """
  builder = _builder(builder, data_dir, config, manual_dir)
  preprocess = preprocess or default_preprocess(seq_len, resolution, train=False, n_cond_frames=n_cond_frames)
  windows = None if window_stride is None else (seq_len, int(window_stride))
  return EvalIterator(builder, split=split, global_batch_size=global_batch_size, sharding=sharding,
                      preprocess=preprocess, seed=seed, windows=windows, process_index=process_index,
                      process_count=process_count)
