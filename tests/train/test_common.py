"""Shared training pieces on a stand-in model (a linear regression): schedule, loop, NaN guard, preemption."""
from __future__ import annotations

import math
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from videogpt_jax import checkpointing, sharding
from videogpt_jax.train import common, loop


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(
      lr=0.5, warmup_steps=0, total_steps=12, lr_schedule="cosine", grad_clip=1.0, log_every=2,
      checkpoint_every=4, eval_every=0, mesh=(-1, 1, 1)))
  config.update(overrides)
  return config


def test_cosine_schedule_matches_the_formula():
  schedule = common.learning_rate_schedule(_config(lr=2.0, total_steps=100))
  for step in (0, 10, 50, 99, 100):
    assert float(schedule(step)) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * step / 100)), abs=1e-6)
  warm = common.learning_rate_schedule(_config(lr=2.0, total_steps=100, warmup_steps=10))
  assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(1.0) and float(warm(10)) == pytest.approx(2.0)
  assert float(warm(100)) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="lr_schedule"):
    common.learning_rate_schedule(_config(lr_schedule="linear"))


def test_optimizer_is_clipped_adam_on_the_schedule():
  params = {"w": jnp.zeros(2)}
  grads = {"w": jnp.array([30.0, 40.0])}
  config = _config(lr=1.0, lr_schedule="constant", grad_clip=1.0)
  updates, _ = common.make_optimizer(config).update(grads, common.make_optimizer(config).init(params), params)
  # Adam's first update is -lr * m / (sqrt(v) + eps) with m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected:
  # -lr * sign(g) for any g, clipped (to [0.6, 0.8]) or not.
  np.testing.assert_allclose(np.asarray(updates["w"]), [-1.0, -1.0], rtol=1e-5)
  assert len(common.make_optimizer(config).init(params)) == 2  # clip + adam
  assert len(common.make_optimizer(_config(grad_clip=0.0)).init(params)) == 1


def test_progress_line():
  progress = common.Progress(total_steps=100, items_per_step=16, item_name="clips", start_step=0)
  text, rates = progress.line(10, {"loss": 1.5})
  assert text.startswith("step 10/100 | loss 1.5 | ") and "steps/s" in text and "clips/s" in text
  assert "ETA " in text and rates["clips_per_sec"] == pytest.approx(16 * rates["steps_per_sec"])


def test_first_non_finite():
  assert common.first_non_finite([(1, {"loss": 1.0}), (2, {"loss": 0.5, "grad_norm": 3.0})]) is None
  assert common.first_non_finite([(1, {"loss": 1.0}), (2, {"loss": 1.0, "grad_norm": math.inf}),
                                  (3, {"loss": math.nan})]) == (2, "grad_norm", math.inf)


# --- The loop, on a stand-in linear regression ---------------------------------------------------------------
_TRUE_W = np.array([1.0, -2.0, 0.5, 3.0], np.float32)


def _batches(mesh, start=0, poison_at=None):
  """Deterministic batches: batch i depends only on i (so a resumed run can restart at any index)."""
  i = start
  while True:
    x = np.random.default_rng(i).normal(size=(8, 4)).astype(np.float32)
    y = x @ _TRUE_W
    if poison_at is not None and i + 1 == poison_at:
      y = y * np.nan
    yield {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), v) for k, v in (("x", x), ("y", y))}
    i += 1


def _setup(config):
  mesh = sharding.make_mesh(config)
  tx = common.make_optimizer(config)

  def init(rng):
    params = {"w": jax.random.normal(rng, (4,)) * 0.1}
    return common.TrainState(step=jnp.array(0, jnp.int32), params=params, opt_state=tx.init(params),
                             model_state={})

  state, shardings, abstract = common.sharded_init(init, jax.random.key(0), mesh)

  def step_fn(state, batch):
    def loss_fn(params):
      return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = common.optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": common.optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  train_step = jax.jit(step_fn, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                       out_shardings=(shardings, None), donate_argnums=(0,))
  return mesh, state, abstract, train_step


def _run(config, tmp_path, state=None, start=0, poison_at=None, on_step=None):
  mesh, fresh, abstract, train_step = _setup(config)
  state = fresh if state is None else state
  counter = {"n": start}
  batches = _batches(mesh, start, poison_at)

  def counted():
    while True:
      counter["n"] += 1
      yield next(batches)

  step = train_step if on_step is None else (lambda s, b: on_step(train_step, s, b))
  ckpt = checkpointing.Checkpointer(tmp_path / "ckpt", max_to_keep=10)
  out = loop.run_loop(config=config, state=state, train_step=step, batches=counted(),
                        data_state=lambda: {"next_batch": counter["n"]}, checkpointer=ckpt,
                        writer=common.SummaryWriter(None), items_per_step=8, item_name="clips")
  return out, ckpt, abstract


def test_loop_trains_checkpoints_and_resumes_identically(tmp_path):
  config = _config()
  (state, result), ckpt, abstract = _run(config, tmp_path / "a")
  losses = [m["loss"] for _, m in result.history]
  assert [s for s, _ in result.history] == list(range(1, 13))
  assert losses[-1] < 0.2 * losses[0]
  assert sorted(ckpt.all_steps()) == [4, 8, 12] and result.stopped == "done"
  # Resume from step 8 (with its data position) and compare the last 4 losses.
  restored = ckpt.restore(abstract, step=8)
  assert restored.data_state == {"next_batch": 8}
  (_, resumed), _, _ = _run(config, tmp_path / "b", state=restored.state, start=restored.data_state["next_batch"])
  assert [s for s, _ in resumed.history] == [9, 10, 11, 12]
  np.testing.assert_allclose([m["loss"] for _, m in resumed.history], losses[8:], rtol=1e-6)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
  config = _config()
  with pytest.raises(common.NonFiniteLossError) as err:
    _run(config, tmp_path, poison_at=6)
  message = str(err.value)
  assert "loss is nan at step 6" in message and "last good checkpoint is step 4" in message
  ckpt = checkpointing.Checkpointer(tmp_path / "ckpt")
  assert ckpt.all_steps() == [4]
  _, _, abstract, _ = _setup(config)
  restored = ckpt.restore(abstract)
  assert np.isfinite(np.asarray(restored.state.params["w"])).all()


def test_sigterm_saves_and_stops_at_the_next_step(tmp_path):
  config = _config()

  def on_step(train_step, state, batch):
    out = train_step(state, batch)
    if int(out[0].step) == 5:
      os.kill(os.getpid(), signal.SIGTERM)
    return out

  (_, result), ckpt, _ = _run(config, tmp_path, on_step=on_step)
  assert result.stopped == "preempted" and result.step == 5
  assert sorted(ckpt.all_steps()) == [4, 5]
  assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_summary_writer_writes_tensorboard_scalars_and_animated_videos(tmp_path):
  import io

  import tensorflow as tf
  from PIL import Image, ImageSequence
  writer = common.SummaryWriter(str(tmp_path))
  writer.scalars(3, {"train/loss": 1.25})
  video = np.zeros((2, 3, 4, 5, 3), np.float32) - 0.5
  video[0, 1] = 0.0  # first clip, second frame: grey (GIF writers merge identical consecutive frames)
  video[1, 2] = 0.5  # second clip, third frame: white
  writer.videos(3, "samples", video)
  writer.videos(3, "rows", [video, video])  # two rows of two clips
  writer.flush()
  (events,) = tmp_path.glob("events.out.tfevents.*")
  seen = {}
  for event in tf.compat.v1.train.summary_iterator(str(events)):
    for value in event.summary.value:
      seen[value.tag] = (event.step, value.metadata.plugin_data.plugin_name, tf.make_ndarray(value.tensor))
  assert seen["train/loss"][:2] == (3, "scalars") and float(seen["train/loss"][2]) == 1.25
  step, plugin, tensor = seen["samples"]
  # One animated GIF: 3 frames of the 2 clips side by side (2-pixel white gap), as TensorBoard's images plugin
  # plays it.
  assert (step, plugin) == (3, "images") and tensor[0] == b"12" and tensor[1] == b"4"
  gif = Image.open(io.BytesIO(tensor[2]))
  frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
  assert gif.format == "GIF" and len(frames) == 3 and frames[0].shape == (4, 12, 3)
  assert frames[2][:, 7:].min() == 255 and frames[2][:, :5].max() == 0 and frames[1][:, 7:].max() == 0
  assert seen["rows"][2][0] == b"12" and seen["rows"][2][1] == b"10"  # two rows of height 4, 2-pixel gap
  assert common.SummaryWriter(None)._writer is None


def test_model_summary_counts_parameters_and_state_bytes():
  mesh = sharding.make_mesh(_config(mesh=(1, 8, 1)))
  params = {"a": {"w": jnp.zeros((8, 4))}, "b": jnp.zeros((3,))}
  state = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  summary = common.log_model_summary(params, state)
  assert summary["num_params"] == 35
  assert len(summary["state_bytes_per_device"]) == 8
  assert set(summary["state_bytes_per_device"].values()) == {35 * 4}  # replicated: every device holds it all
