"""The VQ-VAE trainer end to end on synthetic clips: loss falls, meshes agree, resume, other-mesh restore, NaN."""
from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.configs import vqvae_moving_mnist
from tests.train.synthetic import SyntheticIterator
from videogpt_jax import checkpointing, inference
from videogpt_jax.train import common, vqvae_trainer


def tiny_config(**overrides):
  config = vqvae_moving_mnist.get_config("runlocal")
  config.tensorboard = False
  config.eval_every = 0
  config.total_steps = 12
  config.checkpoint_every = 6
  config.log_every = 3
  config.batch_size = 8
  config.mesh = (-1, 1, 1)
  config.num_devices = 1
  for k, v in overrides.items():
    config[k] = v
  return config


def losses(workdir):
  """step -> loss from metrics.jsonl (the last record of a step wins: a resumed run rewrites its steps)."""
  out = {}
  for line in open(workdir / "metrics.jsonl"):
    record = json.loads(line)
    out[record["step"]] = record["loss"]
  return out


def test_trains_checkpoints_and_loads_for_inference(tmp_path):
  config = tiny_config(total_steps=20, checkpoint_every=10, lr=1e-2)
  result = vqvae_trainer.train_and_evaluate(config, tmp_path, train_iter=SyntheticIterator(config))
  loss = [m["loss"] for _, m in result.history]
  assert len(loss) == 20 and np.isfinite(loss).all()
  assert np.mean(loss[-4:]) < 0.5 * np.mean(loss[:4]), loss
  assert sorted(checkpointing.Checkpointer(tmp_path / "checkpoints").all_steps()) == [10, 20]
  module, variables, saved_config = inference.load_vqvae(tmp_path)
  assert set(variables) == {"params", "batch_stats", "codebook"}
  assert saved_config.model.n_codes == config.model.n_codes
  assert bool(variables["codebook"]["initialized"])
  video = SyntheticIterator(config).__next__()["video"]
  codes = module.apply(variables, np.asarray(video), method=type(module).encode_to_indices)
  assert codes.shape == (8, 2, 4, 4) and codes.dtype == np.int32


@pytest.fixture(scope="module")
def one_device_curve(tmp_path_factory):
  config = tiny_config(mesh=(1, 1, 1), num_devices=1, total_steps=8)
  result = vqvae_trainer.train_and_evaluate(config, tmp_path_factory.mktemp("one"),
                                            train_iter=SyntheticIterator(config))
  return np.array([(m["loss"], m["perplexity"]) for _, m in result.history])


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [
    (1, 4, 2),  # parameters and optimizer state sharded over fsdp x model, batch over fsdp
    (2, 2, 2),  # data, fsdp and model together (see sharding.LOGICAL_AXIS_RULES on convolution kernels)
])
def test_one_and_eight_devices_give_the_same_loss_curve(tmp_path, one_device_curve, mesh):
  config = tiny_config(mesh=mesh, num_devices=8, total_steps=8)
  result = vqvae_trainer.train_and_evaluate(config, tmp_path, train_iter=SyntheticIterator(config))
  curve = np.array([(m["loss"], m["perplexity"]) for _, m in result.history])
  # Same global batch, global BatchNorm / codebook statistics: equal up to float reduction order.
  np.testing.assert_allclose(curve, one_device_curve, rtol=2e-4)


@pytest.mark.slow
def test_resume_on_a_different_mesh_continues_the_run(tmp_path):
  """Saved on 8 devices (fsdp=8), resumed on 4 as data=2 x model=2: the same losses as the unbroken run."""
  import shutil
  full = tiny_config(mesh=(1, 8, 1), num_devices=8, total_steps=12, checkpoint_every=6)
  vqvae_trainer.train_and_evaluate(full, tmp_path / "full", train_iter=SyntheticIterator(full))
  # A run that stopped at step 6: only that checkpoint (same schedule, same data position).
  shutil.copytree(tmp_path / "full" / "checkpoints" / "6", tmp_path / "resumed" / "checkpoints" / "6")
  other = tiny_config(mesh=(2, 1, 2), num_devices=4, total_steps=12, checkpoint_every=6)
  result = vqvae_trainer.train_and_evaluate(other, tmp_path / "resumed", train_iter=SyntheticIterator(other))
  assert [s for s, _ in result.history] == list(range(7, 13))
  want = losses(tmp_path / "full")
  np.testing.assert_allclose([m["loss"] for _, m in result.history], [want[s] for s in range(7, 13)], rtol=2e-4)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(total_steps=12, checkpoint_every=4, log_every=4)
  with pytest.raises(common.NonFiniteLossError, match=r"loss is nan at step 6: .*last good checkpoint is step 4"):
    vqvae_trainer.train_and_evaluate(config, tmp_path, train_iter=SyntheticIterator(config, poison_at=6))
  ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.all_steps() == [4]
  _, variables, _ = inference.load_vqvae(tmp_path)
  assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(variables["params"]))


@pytest.mark.slow
def test_incompatible_checkpoint_is_a_clear_error_and_not_overwritten(tmp_path):
  config = tiny_config(total_steps=2, checkpoint_every=2)
  vqvae_trainer.train_and_evaluate(config, tmp_path, train_iter=SyntheticIterator(config))
  before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*") if p.is_file())
  other = tiny_config(total_steps=4)
  other.model.n_hiddens = 32
  with pytest.raises(checkpointing.CheckpointError, match="incompatible"):
    vqvae_trainer.train_and_evaluate(other, tmp_path, train_iter=SyntheticIterator(other))
  after = sorted(p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").rglob("*") if p.is_file())
  assert before == after


@pytest.mark.slow
@pytest.mark.parametrize("compute_dtype,remat", [("bfloat16", False), ("float32", True)])
def test_bf16_compute_and_remat_keep_float32_state(tmp_path, compute_dtype, remat):
  import jax
  base = tiny_config(total_steps=3, checkpoint_every=3)
  ref = vqvae_trainer.train_and_evaluate(base, tmp_path / "ref", train_iter=SyntheticIterator(base))
  config = tiny_config(total_steps=3, checkpoint_every=3, compute_dtype=compute_dtype)
  config.model.remat = remat  # per residual block
  result = vqvae_trainer.train_and_evaluate(config, tmp_path / "run", train_iter=SyntheticIterator(config))
  got, want = result.history[0][1]["loss"], ref.history[0][1]["loss"]
  # Remat recomputes the same float32 forward; bf16 rounds activations (~3 significant digits).
  assert got == pytest.approx(want, rel=1e-5 if compute_dtype == "float32" else 3e-2)
  _, variables, _ = inference.load_vqvae(tmp_path / "run")
  dtypes = {x.dtype for x in jax.tree.leaves(variables) if np.issubdtype(x.dtype, np.floating)}
  assert dtypes == {np.dtype("float32")}


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  """The tiny Moving MNIST (the runlocal configs' data), built once: the clips the evaluators read."""
  from videogpt_jax.data import builders
  path = tmp_path_factory.mktemp("tfds")
  builders.load_builder("moving_mnist", path, config="tiny")
  return path


class WriterSpy:
  """Records what the train loop hands the TensorBoard writer: `(step, name)` of every scalar and video."""

  def __init__(self, monkeypatch):
    self.scalars, self.videos = {}, {}
    monkeypatch.setattr(common.SummaryWriter, "scalars", self._scalars)
    monkeypatch.setattr(common.SummaryWriter, "videos", self._videos)

  def _scalars(self, step, values, **kw):
    self.scalars.update({(step, k): float(v) for k, v in values.items()})

  def _videos(self, step, name, video, **kw):
    self.videos[(step, name)] = video

  def steps_of(self, name, where="scalars"):
    return sorted(s for s, k in getattr(self, where) if k == name)


def test_evals_run_through_the_suite_at_their_steps_and_the_last(tmp_path, tiny_tfds, monkeypatch):
  import jax
  from videogpt_jax import sharding
  from videogpt_jax.evaluation import suite
  from videogpt_jax.evaluation.evaluators import reconstruction
  spy = WriterSpy(monkeypatch)
  config = tiny_config(total_steps=5, checkpoint_every=5, eval_batches=1)
  config.data.data_dir = str(tiny_tfds)
  config.eval_options.reconstruction = {"every": 2, "num_shown": 2}
  vqvae_trainer.train_and_evaluate(config, tmp_path, train_iter=SyntheticIterator(config))
  assert spy.steps_of("eval/reconstruction/recon_loss") == [2, 4, 5]
  assert spy.steps_of("eval/reconstruction/psnr") == [2, 4, 5]
  assert spy.steps_of("eval/reconstruction/reconstructions", "videos") == [2, 4, 5]
  originals, recons = spy.videos[(5, "eval/reconstruction/reconstructions")]
  assert originals.shape == recons.shape == (2, 4, 16, 16, 3)
  # The step-5 numbers are the evaluator's on the saved step-5 model and the same clips.
  module, variables, _ = inference.load_vqvae(tmp_path)
  mesh = sharding.make_mesh(config)
  data = suite.eval_data(config.data, mesh, batch_size=int(config.batch_size))
  with jax.set_mesh(mesh):
    want = reconstruction.Evaluator(max_batches=1, num_shown=0).run((module, variables), None, data, None).scalars
  assert spy.scalars[(5, "eval/reconstruction/recon_loss")] == pytest.approx(want["recon_loss"], rel=1e-4)
  assert spy.scalars[(5, "eval/reconstruction/n_videos")] == want["n_videos"]
  assert spy.scalars[(2, "eval/reconstruction/recon_loss")] != spy.scalars[(5, "eval/reconstruction/recon_loss")]


def test_no_scheduled_evals_never_open_a_dataset(tmp_path, monkeypatch):
  from videogpt_jax.data import builders

  def no_dataset(*args, **kwargs):
    raise AssertionError("the trainer opened a dataset")

  monkeypatch.setattr(builders, "load_builder", no_dataset)
  spy = WriterSpy(monkeypatch)
  config = tiny_config(total_steps=2, checkpoint_every=2)  # evals=("reconstruction",) with eval_every=0
  vqvae_trainer.train_and_evaluate(config, tmp_path, train_iter=SyntheticIterator(config))
  assert not [k for _, k in spy.scalars if k.startswith("eval/")] and not spy.videos
