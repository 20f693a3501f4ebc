"""The prior's trainer end to end over a tiny trained VQ-VAE: on-the-fly codes, pre-encoded codes, conditioning."""
from __future__ import annotations

import numpy as np
import pytest

from experiments.configs import gpt_bair, gpt_moving_mnist, gpt_ucf101
from tests.train.synthetic import SyntheticIterator, clips
from tests.train.test_vqvae_trainer import WriterSpy, tiny_tfds  # noqa: F401 (tiny_tfds: a fixture)
from tests.train.test_vqvae_trainer import tiny_config as tiny_vqvae_config
from videogpt_jax import inference, sharding
from videogpt_jax.train import codes_file, gpt_trainer, vqvae_trainer


@pytest.fixture(scope="module")
def vqvae_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vqvae")
  config = tiny_vqvae_config(total_steps=4, checkpoint_every=4, lr=1e-2)
  vqvae_trainer.train_and_evaluate(config, workdir, train_iter=SyntheticIterator(config))
  return workdir


def tiny_config(vqvae_workdir, module=gpt_moving_mnist, arg="runlocal", **overrides):
  config = module.get_config(arg)
  config.vqvae_workdir = str(vqvae_workdir)
  config.tensorboard = False
  config.eval_every = 0
  config.total_steps = 16
  config.checkpoint_every = 8
  config.log_every = 4
  config.batch_size = 8
  config.num_devices = 1
  config.eval_options.samples.every = 0  # runlocal: 30 (the last step); the test of samples sets its own
  for k, v in overrides.items():
    config[k] = v
  return config


@pytest.mark.slow
def test_prior_trains_on_the_fly_codes_and_loads(vqvae_workdir, tmp_path):
  config = tiny_config(vqvae_workdir, lr=1e-2)
  result = gpt_trainer.train_and_evaluate(config, tmp_path, train_iter=SyntheticIterator(config))
  loss = [m["loss"] for _, m in result.history]
  assert len(loss) == 16 and np.mean(loss[-4:]) < 0.8 * np.mean(loss[:4]), loss
  assert loss[0] == pytest.approx(np.log(32), rel=0.05)  # fc_out starts at zero: uniform over K = 32 codes
  gpt, variables, saved = inference.load_gpt(tmp_path)
  _, vq_vars, _ = inference.load_vqvae(vqvae_workdir)
  np.testing.assert_array_equal(np.asarray(variables["codebook"]["embeddings"]),
                                np.asarray(vq_vars["codebook"]["embeddings"]))
  assert tuple(saved.derived.shape) == gpt.shape == (2, 4, 4)
  codes = np.zeros((2, 2, 4, 4), np.int32)
  logits = gpt.apply(variables, codes, deterministic=True)
  assert logits.shape == (2, 2, 4, 4, 32)


@pytest.mark.slow
def test_prior_trains_from_pre_encoded_codes_and_resumes_their_order(vqvae_workdir, tmp_path):
  vqvae, vq_vars, _ = inference.load_vqvae(vqvae_workdir)
  video = np.concatenate([clips(0, i, 8, 4, 16) for i in range(3)])
  codes = np.asarray(vqvae.apply(vq_vars, video, method=type(vqvae).encode_to_indices))
  path = tmp_path / "codes.npz"
  codes_file.save_codes(path, {"codes": codes})
  config = tiny_config(vqvae_workdir, codes_path=str(path), total_steps=6, checkpoint_every=3)
  result = gpt_trainer.train_and_evaluate(config, tmp_path / "run")
  assert [s for s, _ in result.history] == list(range(1, 7))
  # The iterator: same batches for any restart point, every clip once per epoch.
  mesh = sharding.make_mesh(config)
  it = codes_file.CodesIterator(path, global_batch_size=8, mesh=mesh, seed=0)
  batches = [np.asarray(next(it)["codes"]) for _ in range(5)]
  epoch = np.concatenate(batches[:3])
  assert sorted(map(bytes, epoch)) == sorted(map(bytes, codes))
  resumed = codes_file.CodesIterator(path, global_batch_size=8, mesh=mesh, seed=0).restore({"step": 3, "seed": 0})
  np.testing.assert_array_equal(np.asarray(next(resumed)["codes"]), batches[3])
  with pytest.raises(ValueError, match="seed"):
    resumed.restore({"step": 1, "seed": 5})
  with pytest.raises(FileNotFoundError, match="encode_dataset"):
    codes_file.CodesIterator(tmp_path / "missing.npz", global_batch_size=8, mesh=mesh, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("module,arg,labels,n_cond", [
    (gpt_bair, "runlocal", 0, 1),
    (gpt_ucf101, "classcond,runlocal", 101, 0),
])
def test_conditional_runlocal_configs_train(vqvae_workdir, tmp_path, module, arg, labels, n_cond):
  config = tiny_config(vqvae_workdir, module, arg, total_steps=4, checkpoint_every=4, batch_size=4)
  result = gpt_trainer.train_and_evaluate(
      config, tmp_path, train_iter=SyntheticIterator(config, labels=labels, n_cond_frames=n_cond))
  assert result.step == 4 and np.isfinite([m["loss"] for _, m in result.history]).all()
  gpt, _, saved = inference.load_gpt(tmp_path)
  assert gpt.n_cond_frames == n_cond and (gpt.class_cond_dim or 0) == labels


def test_missing_vqvae_workdir_is_a_clear_error(tmp_path):
  config = tiny_config(tmp_path / "nowhere")
  from videogpt_jax.checkpointing import CheckpointError
  with pytest.raises(CheckpointError, match="no checkpoint found in .*nowhere"):
    gpt_trainer.train_and_evaluate(config, tmp_path / "run", train_iter=iter(()))
  config.vqvae_workdir = ""
  with pytest.raises(ValueError, match="vqvae_workdir is required"):
    gpt_trainer.train_and_evaluate(config, tmp_path / "run", train_iter=iter(()))


@pytest.mark.slow
def test_samples_are_drawn_every_eval_options_samples_every_steps_without_other_evals(vqvae_workdir, tmp_path,
                                                                                      monkeypatch):
  from videogpt_jax.data import builders

  def no_dataset(*args, **kwargs):
    raise AssertionError("an unconditional prior's samples read no clips")

  monkeypatch.setattr(builders, "load_builder", no_dataset)
  spy = WriterSpy(monkeypatch)
  config = tiny_config(vqvae_workdir, total_steps=5, checkpoint_every=5, eval_every=0)
  config.eval_options.samples = {"every": 2, "num_samples": 3}
  gpt_trainer.train_and_evaluate(config, tmp_path, train_iter=SyntheticIterator(config))
  assert spy.steps_of("eval/samples/samples", "videos") == [2, 4, 5]  # its steps and the last
  assert spy.steps_of("eval/samples/n_samples") == [2, 4, 5]
  assert not spy.steps_of("eval/bits_per_dim/bits_per_dim")  # every = eval_every = 0
  videos = [spy.videos[(s, "eval/samples/samples")] for s in (2, 4, 5)]
  assert all(v.shape == (3, 4, 16, 16, 3) and v.min() >= -0.5 and v.max() <= 0.5 for v in videos)
  assert not np.array_equal(videos[0], videos[1])  # a new key per step


@pytest.mark.slow
def test_bits_per_dim_runs_through_the_suite_at_eval_every_and_the_last_step(vqvae_workdir, tmp_path, tiny_tfds,
                                                                            monkeypatch):
  import jax
  from videogpt_jax.evaluation import suite
  from videogpt_jax.evaluation.evaluators import bits_per_dim
  spy = WriterSpy(monkeypatch)
  config = tiny_config(vqvae_workdir, total_steps=4, checkpoint_every=4, eval_every=3, eval_batches=1)
  config.data.data_dir = str(tiny_tfds)
  gpt_trainer.train_and_evaluate(config, tmp_path, train_iter=SyntheticIterator(config))
  assert spy.steps_of("eval/bits_per_dim/bits_per_dim") == [3, 4]
  assert spy.steps_of("eval/bits_per_dim/nats_per_dim") == [3, 4]
  assert not spy.videos  # samples: every 0
  # Step 4's number is the evaluator's on the saved prior and the same clips.
  gpt, gpt_vars, _ = inference.load_gpt(tmp_path)
  vqvae, vq_vars, _ = inference.load_vqvae(vqvae_workdir)
  mesh = sharding.make_mesh(config)
  data = suite.eval_data(config.data, mesh, batch_size=int(config.batch_size))
  with jax.set_mesh(mesh):
    want = bits_per_dim.Evaluator(max_batches=1).run((vqvae, vq_vars), (gpt, gpt_vars), data, None).scalars
  assert spy.scalars[(4, "eval/bits_per_dim/bits_per_dim")] == pytest.approx(want["bits_per_dim"], rel=1e-5)
  assert spy.scalars[(4, "eval/bits_per_dim/n_videos")] == want["n_videos"] > 0


def test_an_old_config_with_sample_every_is_an_error_naming_the_new_field(tmp_path):
  from videogpt_jax.train import config_checks
  for old, new in (("sample_every", "eval_options.samples.every"),
                   ("num_samples", "eval_options.samples.num_samples")):
    config = tiny_config(tmp_path / "unused")
    with config.unlocked():
      config[old] = 2
    with pytest.raises(config_checks.ConfigError, match=rf"--config.{old} has moved to --config.{new}"):
      gpt_trainer.train_and_evaluate(config, tmp_path / "run", train_iter=iter(()))
