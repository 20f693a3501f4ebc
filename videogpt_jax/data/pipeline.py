"""tf.data input pipelines yielding global sharded `jax.Array` batches, resumable at any step on any number of hosts.

Datasets are read by random access from their ArrayRecord files (`tfds` data sources). Train: epoch `e` is one
permutation of the whole split seeded by `(seed, e)`; global batch `s` of the epoch is the permutation's entries
`[s B, (s + 1) B)` and process `p` of `n` reads its contiguous `B / n` of them. Every example carries the stateless
seed `(hash(seed, e), position in epoch)` for its random ops (window start, crop, flip). A global batch is therefore
a pure function of the step number, whatever the number of processes: a run saved on N hosts resumes on M hosts
with the same data, and resuming reads only the examples still to come (no skipping through the epoch). Epochs
never straddle (the last `len(split) % B` of each permutation are dropped), so steps_per_epoch is fixed.

Eval: one pass over the whole split in order, fixed windows, the last batch padded with zeros and `mask=False`;
every process yields the same number of batches (needed for global arrays).

Batches are dicts: `video (B, T, H, W, 3)` float32 in [-0.5, 0.5], `label (B,)` int32 when the dataset has
labels, `cond_frames (B, n_cond_frames, H, W, 3)` when `n_cond_frames > 0`, and `mask (B,)` bool for eval. With
`sharding=None` they are process-local numpy arrays instead of global `jax.Array`s.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from videogpt_jax import sharding as sharding_lib
from videogpt_jax.data import builders as builders_lib
from videogpt_jax.data import preprocess_ops

BuilderArg = str | tfds.core.DatasetBuilder
_OUTPUT_KEYS = ("video", "label", "cond_frames", "mask")
# Names the data order of `TrainIterator` in its state (states without it come from a per-process shuffle).
_ORDER = "global_permutation"


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


def data_source(builder: tfds.core.DatasetBuilder, split) -> Any:
  """Random access to the serialized examples of `split` (`len()`, `[i]`)."""
  try:
    return builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  except NotImplementedError:
    raise ValueError(
        f"dataset {builder.name!r} in {builder.data_dir} is stored as {builder.info.file_format.value} files, "
        "but the input pipeline needs random access (ArrayRecord): rebuild it into a new data_dir with "
        "`python -m videogpt_jax.data.build`") from None


def _read(builder: tfds.core.DatasetBuilder, source: Any, indices: np.ndarray) -> tf.data.Dataset:
  """Raw examples `source[indices]` in that order (`video` still encoded, `(T,)` strings), with only the keys the
  pipeline carries."""
  indices = np.asarray(indices, np.int64)
  ds = tf.data.Dataset.from_generator(lambda: (source[int(i)] for i in indices),
                                      output_signature=tf.TensorSpec((), tf.string))
  features = builder.info.features
  has_label = "label" in features

  def parse(serialized):
    x = features.deserialize_example(serialized, decoders={"video": tfds.decode.SkipDecoding()})
    return {"video": x["video"], **({"label": tf.cast(x["label"], tf.int32)} if has_label else {})}

  return ds.map(parse)


def _read_split(builder: tfds.core.DatasetBuilder, split) -> tf.data.Dataset:
  """All raw examples of `split` in order."""
  source = data_source(builder, split)
  return _read(builder, source, np.arange(len(source)))


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
  """Infinite iterator over training batches; `state()` / `restore()` give exact resumption on any process count."""

  def __init__(self, builder: tfds.core.DatasetBuilder, *, split: str, global_batch_size: int, sharding,
               preprocess: str, seed: int, start_step: int = 0, process_index: int | None = None,
               process_count: int | None = None):
    self.builder = builder
    self.split = split
    self.seed = int(seed)
    self.global_batch_size = int(global_batch_size)
    self.sharding = sharding
    self.preprocess = preprocess
    self.process_index = jax.process_index() if process_index is None else int(process_index)
    self.process_count = jax.process_count() if process_count is None else int(process_count)
    self.local_batch_size = sharding_lib.local_batch_size(self.global_batch_size, sharding,
                                                          process_count=self.process_count)
    self.source = data_source(builder, split)
    self.examples_per_epoch = len(self.source)
    self.steps_per_epoch = self.examples_per_epoch // self.global_batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f"split {split!r} has {self.examples_per_epoch} examples, fewer than the global batch of "
                       f"{self.global_batch_size}")
    self._preprocess_fn = preprocess_ops.get_preprocess_fn(preprocess)
    self._step = int(start_step)
    self._it = None

  def epoch_positions(self, epoch: int, first_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """`(example indices, positions in the epoch)` this process reads from global batch `first_batch` on."""
    order = np.random.default_rng(_mix(self.seed, epoch)).permutation(self.examples_per_epoch)
    steps = np.arange(first_batch, self.steps_per_epoch)[:, None]
    positions = (steps * self.global_batch_size + self.process_index * self.local_batch_size +
                 np.arange(self.local_batch_size)[None, :]).reshape(-1)
    return order[positions], positions

  def _epoch_dataset(self, epoch: int, first_batch: int) -> tf.data.Dataset:
    epoch_seed = _mix(self.seed, epoch)
    indices, positions = self.epoch_positions(epoch, first_batch)
    ds = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(positions),
                             _read(self.builder, self.source, indices))

    def prepare(position, example):
      example = dict(example, _seed=tf.stack([tf.constant(epoch_seed, tf.int64), position]))
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
      self._it = None  # The epoch is spent; the next call opens the next one.
    return _to_output(batch, self.sharding)

  @property
  def step(self) -> int:
    return self._step

  def state(self) -> dict[str, Any]:
    """JSON-serialisable position: the number of batches already yielded and what the data order depends on.

    `process_count` is recorded for the logs only: the order does not depend on it.
    """
    return {"step": self._step, "seed": self.seed, "split": self.split, "global_batch_size": self.global_batch_size,
            "process_count": self.process_count, "preprocess": self.preprocess, "dataset": self.builder.name,
            "order": _ORDER}

  def restore(self, state: dict[str, Any]) -> TrainIterator:
    """Moves to `state["step"]`; raises ValueError if the state was saved for a different data order."""
    mine = self.state()
    if state.get("order") != _ORDER:
      logging.warning("iterator state %s comes from an input pipeline with a per-process shuffle; resuming at "
                      "step %s in this pipeline's order (examples seen before the restart may repeat)", state,
                      state["step"])
    for key in ("seed", "split", "global_batch_size", "preprocess", "dataset"):
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
    self.local_batch_size = sharding_lib.local_batch_size(global_batch_size, sharding, process_count=process_count)
    self.local_split = split_for_process(split, process_index=process_index, process_count=process_count)
    if windows is None:
      per_process = [builder.info.splits[split_for_process(split, process_index=i, process_count=process_count)]
                     .num_examples for i in range(process_count)]
    else:
      per_process = [_count_windows(_read_split(builder, split_for_process(split, process_index=i,
                                                                            process_count=process_count)), *windows)
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

    ds = _read_split(self.builder, self.local_split)
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
                        shuffle_buffer: int | None = None, process_index: int | None = None,
                        process_count: int | None = None) -> TrainIterator:
  """Training batches of `seq_len`-frame random windows at `resolution`, sharded by `sharding` over the batch.

  Args:
    builder: a dataset name from `videogpt_jax.data.builders.BUILDERS` (built in `data_dir` if needed) or a builder.
    sharding: e.g. `NamedSharding(mesh, P(("data", "fsdp")))`; None yields process-local numpy batches.
    preprocess: an op string (see `preprocess_ops`); default `default_preprocess(seq_len, resolution, ...)`.
    n_cond_frames: if > 0, batches also carry `cond_frames`, the first `n_cond_frames` frames of `video`.
    start_step: number of batches already consumed (resume from `TrainIterator.state()["step"]`).
    shuffle_buffer: unused (each epoch is a full permutation of the split); accepted so that existing callers and
      `config.data.shuffle_buffer` keep working.
    process_index, process_count: override JAX's (to simulate several hosts with `sharding=None`).
  """
  del shuffle_buffer
  builder = _builder(builder, data_dir, config, manual_dir)
  preprocess = preprocess or default_preprocess(seq_len, resolution, train=True, n_cond_frames=n_cond_frames)
  return TrainIterator(builder, split=split, global_batch_size=global_batch_size, sharding=sharding,
                       preprocess=preprocess, seed=seed, start_step=start_step, process_index=process_index,
                       process_count=process_count)


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
