"""Named video preprocessing ops, composed by a string (big_vision style).

`get_preprocess_fn("random_window(16)|decode_video|resize_smaller(64)|center_crop(64)|gray_to_rgb|value_range")`
returns one function on a dict of tensors, usable eagerly and inside `tf.data.Dataset.map`. Each op reads and
writes `data["video"]` (`(T, H, W, C)`; encoded frames `(T,)` strings before `decode_video`) and leaves the other
keys alone. Random ops are stateless: they draw from `data["_seed"]` (a `(2,)` int seed the pipeline derives from
(seed, epoch, example position)), folded with a per-op salt, so a batch is a pure function of the iterator state.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

import tensorflow as tf

Data = dict[str, tf.Tensor]
Op = Callable[[Data], Data]

_REGISTRY: dict[str, Callable[..., Op]] = {}


def register(name: str) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
  """Registers an op factory under `name` (its arguments are the literal arguments in the spec string)."""
  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f"preprocess op {name!r} registered twice")
    _REGISTRY[name] = factory
    return factory
  return wrap


def registered_ops() -> list[str]:
  return sorted(_REGISTRY)


def get_op(spec: str) -> Op:
  """Builds one op from `"name"` or `"name(arg, ..., key=value)"` (literal arguments only).

  Raises:
    ValueError: unparsable spec, unknown op name or non-literal argument.
  """
  try:
    node = ast.parse(spec.strip(), mode="eval").body
    if isinstance(node, ast.Name):
      name, args, kwargs = node.id, [], {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      name = node.func.id
      args = [ast.literal_eval(a) for a in node.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    else:
      raise ValueError("expected name or name(args)")
  except (SyntaxError, ValueError) as e:
    raise ValueError(f"Bad preprocess op {spec!r}: {e}") from e
  if name not in _REGISTRY:
    raise ValueError(f"Unknown preprocess op {name!r} in {spec!r}; known: {registered_ops()}")
  return _REGISTRY[name](*args, **kwargs)


def get_preprocess_fn(spec: str) -> Op:
  """Composes the `|`-separated ops of `spec` left to right into one function on a dict of tensors."""
  ops = [get_op(s) for s in spec.split("|") if s.strip()]

  def preprocess(data: Data) -> Data:
    data = dict(data)
    for op in ops:
      data = op(data)
    return data
  return preprocess


def checked_spec(spec: str | None, name: str, n_cond_frames: int = 0) -> str | None:
  """`spec` (the op string of the config field `name`, e.g. `config.data.pp_train`) after building it once; None
  when empty (the pipeline's default preprocessing for the clip length, resolution and conditioning frames).

  Raises:
    ValueError: naming `name`, for bad syntax or an unknown op, or (`n_cond_frames > 0`) a spec whose last op is
      not `cond_frames(n_cond_frames)`.
  """
  spec = (spec or "").strip()
  if not spec:
    return None
  try:
    get_preprocess_fn(spec)
  except ValueError as e:
    raise ValueError(f"{name}: {e}") from None
  if n_cond_frames and spec.split("|")[-1].replace(" ", "") != f"cond_frames({n_cond_frames})":
    raise ValueError(f"{name}={spec!r}: a prior conditioned on {n_cond_frames} frame(s) needs the op string to end "
                     f"with |cond_frames({n_cond_frames})")
  return spec


def _seed(data: Data, salt: int) -> tf.Tensor:
  if "_seed" not in data:
    raise KeyError("random preprocess ops need data['_seed'] (a (2,) int seed); the pipeline adds it, eager "
                   "callers must pass one")
  return tf.random.experimental.stateless_fold_in(tf.cast(data["_seed"], tf.int64), salt)


def _window(video: tf.Tensor, start: tf.Tensor, length: int) -> tf.Tensor:
  n = tf.shape(video)[0]
  tf.debugging.assert_greater_equal(n, length, message=f"video shorter than the {length}-frame window")
  out = video[start:start + length]
  return tf.ensure_shape(out, [length, *video.shape[1:]])


@register("random_window")
def get_random_window(length: int, key: str = "video") -> Op:
  """A window of `length` consecutive frames at a uniformly random start."""
  def op(data):
    n = tf.shape(data[key])[0]
    start = tf.random.stateless_uniform([], _seed(data, 1), minval=0, maxval=tf.maximum(n - length + 1, 1),
                                        dtype=tf.int32)
    return {**data, key: _window(data[key], start, length)}
  return op


@register("fixed_window")
def get_fixed_window(length: int, start: int = 0, key: str = "video") -> Op:
  """The window of `length` frames starting at frame `start` (evaluation)."""
  def op(data):
    return {**data, key: _window(data[key], tf.constant(start, tf.int32), length)}
  return op


@register("center_window")
def get_center_window(length: int, key: str = "video") -> Op:
  """The window of `length` frames centred in the clip."""
  def op(data):
    start = tf.maximum(tf.shape(data[key])[0] - length, 0) // 2
    return {**data, key: _window(data[key], start, length)}
  return op


@register("decode_video")
def get_decode_video(channels: int = 0, key: str = "video") -> Op:
  """Decodes `(T,)` encoded frames (PNG/JPEG, as `tfds.features.Video` stores them) to `(T, H, W, C)` uint8.

  Already-decoded uint8 videos pass through, so the op can sit in any spec.
  """
  def op(data):
    video = data[key]
    if video.dtype != tf.string:
      return data
    frames = tf.map_fn(lambda f: tf.io.decode_image(f, channels=channels, expand_animations=False), video,
                       fn_output_signature=tf.uint8)
    return {**data, key: frames}
  return op


@register("resize_smaller")
def get_resize_smaller(size: int, method: str = "bilinear", antialias: bool = False, key: str = "video") -> Op:
  """Resizes so the shorter side is `size`, keeping the aspect ratio (uint8 in, uint8 out).

  `antialias=False` matches the original's `F.interpolate(mode="bilinear", align_corners=False)`.
  """
  def op(data):
    video = data[key]
    h, w = tf.shape(video)[1], tf.shape(video)[2]
    scale = tf.cast(size, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
    new_h = tf.maximum(tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32), size)
    new_w = tf.maximum(tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32), size)
    if video.shape[1] is not None and min(video.shape[1], video.shape[2]) == size:
      return data  # Already the right size: skip the resampling (and its rounding).
    out = tf.image.resize(video, tf.stack([new_h, new_w]), method=method, antialias=antialias)
    if video.dtype == tf.uint8:
      out = tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
    return {**data, key: out}
  return op


def _crop(video: tf.Tensor, top: tf.Tensor, left: tf.Tensor, size: int) -> tf.Tensor:
  out = video[:, top:top + size, left:left + size]
  return tf.ensure_shape(out, [video.shape[0], size, size, video.shape[3]])


@register("center_crop")
def get_center_crop(size: int, key: str = "video") -> Op:
  """The central `size x size` crop of every frame."""
  def op(data):
    video = data[key]
    h, w = tf.shape(video)[1], tf.shape(video)[2]
    return {**data, key: _crop(video, (h - size) // 2, (w - size) // 2, size)}
  return op


@register("random_crop")
def get_random_crop(size: int, key: str = "video") -> Op:
  """A random `size x size` crop, the same for all frames of a clip."""
  def op(data):
    video = data[key]
    h, w = tf.shape(video)[1], tf.shape(video)[2]
    offsets = tf.random.stateless_uniform([2], _seed(data, 2), minval=0, maxval=2**30, dtype=tf.int32)
    return {**data, key: _crop(video, offsets[0] % (h - size + 1), offsets[1] % (w - size + 1), size)}
  return op


@register("flip_lr")
def get_flip_lr(prob: float = 0.5, key: str = "video") -> Op:
  """Mirrors all frames of a clip left-right with probability `prob`."""
  def op(data):
    flip = tf.random.stateless_uniform([], _seed(data, 3)) < prob
    video = data[key]
    return {**data, key: tf.cond(flip, lambda: tf.reverse(video, axis=[2]), lambda: video)}
  return op


@register("gray_to_rgb")
def get_gray_to_rgb(key: str = "video") -> Op:
  """Tiles one-channel frames to three channels; RGB passes through."""
  def op(data):
    video = data[key]
    if video.shape[-1] == 1:
      video = tf.tile(video, [1, 1, 1, 3])
    elif video.shape[-1] is None:  # decode_video without `channels` leaves the channel count dynamic.
      video = tf.cond(tf.equal(tf.shape(video)[-1], 1), lambda: tf.tile(video, [1, 1, 1, 3]), lambda: video)
      video = tf.ensure_shape(video, [*video.shape[:-1], 3])
    return {**data, key: video}
  return op


@register("value_range")
def get_value_range(vmin: float = -0.5, vmax: float = 0.5, in_min: float = 0.0, in_max: float = 255.0,
                    key: str = "video") -> Op:
  """Maps `[in_min, in_max]` linearly to `[vmin, vmax]` as float32 (default: uint8 to VideoGPT's [-0.5, 0.5])."""
  def op(data):
    video = tf.cast(data[key], tf.float32)
    video = vmin + (video - in_min) * ((vmax - vmin) / (in_max - in_min))
    return {**data, key: video}
  return op


@register("cond_frames")
def get_cond_frames(n: int, key: str = "video") -> Op:
  """Adds `cond_frames`, the first `n` frames of the (windowed, preprocessed) video: `(n, H, W, C)`."""
  def op(data):
    return {**data, "cond_frames": data[key][:n]}
  return op


@register("keep")
def get_keep(*keys: str) -> Op:
  """Drops every key not listed (and not internal, i.e. starting with `_`)."""
  def op(data):
    return {k: v for k, v in data.items() if k in keys or k.startswith("_")}
  return op
