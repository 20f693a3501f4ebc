"""`experiments/evaluate.py` end to end on the tiny Moving MNIST configs: flags, every protocol, the feature cache,
a converted checkpoint directory.

The slow tests share a VQ-VAE and a frame-conditional prior (1 conditioning frame: the BAIR protocol) trained for
two steps by the real trainers on 16-frame 16x16 clips (I3D needs >= 9 frames, C3D exactly 16). The fast ones use
an untrained, step-0 VQ-VAE checkpoint. Expected values are recomputed here from the restored models directly.
"""
from __future__ import annotations

import json
import math
import os
import re
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import optax
import pytest
from absl import app, flags

from experiments import evaluate
from experiments.configs import gpt_moving_mnist, vqvae_moving_mnist
from tests import fixtures
from tests.convert.test_converted_workdirs import _lightning
from tests.evaluation.test_c3d import _write_chainer_npz
from videogpt_jax import inference, sharding
from videogpt_jax.convert.__main__ import convert
from videogpt_jax.evaluation import fvd, runner
from videogpt_jax.evaluation.evaluators import fvd as fvd_eval
from videogpt_jax.train import common, inputs, steps

REPO = pathlib.Path(__file__).resolve().parents[2]
SEQ_LEN = 16


def _tiny(config: ml_collections.ConfigDict, data_dir: pathlib.Path) -> ml_collections.ConfigDict:
  config.data.data_dir = str(data_dir)
  config.data.seq_len = SEQ_LEN
  config.tensorboard = False
  config.total_steps = 2
  config.checkpoint_every = 2
  config.log_every = 1
  config.eval_every = 0
  config.num_devices = 4  # runlocal batch 4 over 4 devices
  return config


def run_command(**flag_values) -> dict:
  """Runs `evaluate.main` with these flags (the command's own FlagValues, reset first); returns its JSON output."""
  argv = ["evaluate"] + [f"--{k}={v}" for k, v in flag_values.items() if v is not None]
  evaluate.FLAGS.unparse_flags()
  evaluate.FLAGS(argv)
  evaluate.main(argv[:1])
  with open(flag_values["output"]) as f:
    return json.load(f)


def first_batch(config, batch_size: int, n_cond_frames: int = 0) -> dict[str, np.ndarray]:
  """The first (unsharded) evaluation batch of the model config's test split."""
  from videogpt_jax.data import pipeline
  it = pipeline.make_eval_iterator(inputs.load_builder(config), split="test", global_batch_size=batch_size,
                                   sharding=None, seq_len=int(config.data.seq_len),
                                   resolution=int(config.data.resolution),
                                   n_cond_frames=n_cond_frames)
  return next(iter(it))


@pytest.fixture(scope="session")
def untrained_vqvae(tmp_path_factory):
  """A step-0 checkpoint of the runlocal VQ-VAE (4-frame clips; saved as the trainer saves it), never trained."""
  root = tmp_path_factory.mktemp("untrained")
  config = vqvae_moving_mnist.get_config("runlocal")
  config.data.data_dir = str(root / "data")
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"mesh": (1, 1, 1), "num_devices": 1}))
  program = steps.vqvae_program(config, mesh)
  state = program.init(jax.random.key(0))
  checkpointer = common.make_checkpointer(config, root / "vqvae")
  checkpointer.save(0, state, config=config)
  checkpointer.close()
  return root / "vqvae", config


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """`{"vqvae": workdir, "gpt": workdir, ...}` of a VQ-VAE and a 1-frame-conditional prior, 2 steps each."""
  from videogpt_jax.train import gpt_trainer, vqvae_trainer
  root = tmp_path_factory.mktemp("trained")
  vq_config = _tiny(vqvae_moving_mnist.get_config("runlocal"), root / "data")
  vqvae_trainer.train_and_evaluate(vq_config, root / "vqvae")
  gpt_config = _tiny(gpt_moving_mnist.get_config("runlocal"), root / "data")
  gpt_config.vqvae_workdir = str(root / "vqvae")
  gpt_config.eval_options.samples.every = 0
  gpt_config.model.n_cond_frames = 1
  gpt_trainer.train_and_evaluate(gpt_config, root / "gpt")
  return {"root": root, "vqvae": root / "vqvae", "gpt": root / "gpt", "vq_config": vq_config,
          "gpt_config": gpt_config}


# ---------------------------------------------------------------------------------------------------------------
# Fast: flags and the reconstruction protocol.
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_workdir(tmp_path):
  """A folder that passes the flag checks' `<workdir>/checkpoints` test (nothing is ever restored from it)."""
  (tmp_path / "run" / "checkpoints").mkdir(parents=True)
  return str(tmp_path / "run")


@pytest.mark.parametrize("flag_values, message", [
    (dict(protocol="fvd"), "--gpt_workdir is required"),
    (dict(protocol="reconstruction"), "--vqvae_workdir is required"),
    (dict(protocol="bits_per_dim", gpt_workdir="/nonexistent/run"), "--gpt_workdir=/nonexistent/run: no checkpoints"),
    (dict(protocol="reconstruction", vqvae_workdir="RUN", batch_size=0), "--batch_size must be >= 1"),
    (dict(protocol="reconstruction", vqvae_workdir="RUN", max_batches=-1), "--max_batches must be >= 0"),
    (dict(protocol="reconstruction", vqvae_workdir="RUN", mesh="2,2"), "--mesh must be 3 integers"),
    (dict(protocol="reconstruction", vqvae_workdir="RUN", mesh="a,1,1"), "--mesh must be integers"),
    (dict(protocol="reconstruction", vqvae_workdir="RUN", i3d_weights="/no/i3d.pt"), "--i3d_weights=/no/i3d.pt"),
    (dict(protocol="reconstruction", vqvae_workdir="RUN", top_p=1.5), r"--top_p must be in \(0, 1\]"),
    (dict(protocol="fvd", gpt_workdir="RUN", clips_per_trial=1), "--clips_per_trial must be >= 2"),
    (dict(protocol="inception_score", gpt_workdir="RUN"), "--c3d_weights is required"),
    (dict(protocol="inception_score", gpt_workdir="RUN", c3d_weights=__file__, c3d_mean="/no/mean2.npz"),
     "--c3d_mean=.*not found"),
    (dict(protocol="inception_score", gpt_workdir="RUN", c3d_weights=__file__, c3d_mean=__file__, num_samples=4),
     "--num_samples=4 must be at least --is_splits=10"),
])
def test_invalid_flags_are_usage_errors_naming_the_flag(fake_workdir, tmp_path, flag_values, message):
  flag_values = {k: fake_workdir if v == "RUN" else v for k, v in flag_values.items()}
  with pytest.raises(app.UsageError, match=message):
    run_command(output=str(tmp_path / "out.json"), **flag_values)
  assert not (tmp_path / "out.json").exists()


def test_bad_enum_and_mesh_errors(fake_workdir, tmp_path):
  with pytest.raises(flags.IllegalFlagValueError):  # absl checks the enum itself
    run_command(protocol="psnr", output=str(tmp_path / "out.json"))
  with pytest.raises(flags.IllegalFlagValueError, match="--protocol must have a value"):
    run_command(output=str(tmp_path / "out.json"))
  assert "protocol" not in flags.FLAGS  # importing the command defines no global flag
  # 8 devices cannot split a batch of 4: one error naming the flags, before any model is loaded
  with pytest.raises(runner.SettingsError,
                     match="--batch_size=4: batch_size=4 must be divisible by the mesh's data x fsdp = 8"):
    run_command(protocol="reconstruction", vqvae_workdir=fake_workdir, batch_size=4,
                output=str(tmp_path / "out.json"))


def test_reconstruction_on_eight_devices_matches_a_direct_evaluation(untrained_vqvae, tmp_path):
  workdir, config = untrained_vqvae
  out = run_command(protocol="reconstruction", vqvae_workdir=str(workdir), batch_size=8, max_batches=1,
                    output=str(tmp_path / "recon.json"))
  assert out["protocol"] == "reconstruction" and out["models"]["vqvae_step"] == 0
  assert out["data"]["split"] == "test" and out["data"]["dataset"] == "moving_mnist"
  m = out["metrics"]
  assert m["n_videos"] == 8
  # The same clips through the restored model on one device, metrics written out here.
  module, variables, _ = inference.load_vqvae(workdir)
  video = first_batch(config, 8)["video"].astype(np.float64)
  forward = jax.jit(lambda v: module.apply(variables, v, train=False)[0])
  recon = np.asarray(forward(video.astype(np.float32)), np.float64)
  mse = np.mean((recon - video) ** 2)
  per_clip = np.mean((np.clip(recon, -0.5, 0.5) - video).reshape(8, -1) ** 2, axis=1)
  assert m["mse"] == pytest.approx(mse, rel=1e-4)
  assert m["nmse"] == pytest.approx(mse / video.var(), rel=1e-4)
  assert m["psnr"] == pytest.approx(np.mean(10 * np.log10(1.0 / per_clip)), rel=1e-4)
  assert m["psnr"] > 0 and 0.0 <= m["ssim"] <= 1.0 and "r_fvd" not in m
  with pytest.raises(runner.SettingsError,
                     match=re.escape("--split=validation: dataset moving_mnist has splits ['test', 'train']")):
    run_command(protocol="reconstruction", vqvae_workdir=str(workdir), split="validation",
                output=str(tmp_path / "bad.json"))


def test_reconstruction_of_a_converted_checkpoint_directory(untrained_vqvae, tmp_path):
  """A directory written by `videogpt_jax.convert` is a model directory: its config names no dataset, so
  `--dataset` gives it, and the metrics are those of the converted model on those clips."""
  pytest.importorskip("torch")
  z, meta = fixtures.load("vqvae_small.npz")
  _lightning(fixtures.state_dict(z), dict(meta["hparams"]["args"]), tmp_path / "vqvae.ckpt")
  converted = convert(tmp_path / "vqvae.ckpt", tmp_path / "converted", kind="vqvae")
  assert not (converted / "checkpoints").exists()
  data_dir = untrained_vqvae[1].data.data_dir
  with pytest.raises(runner.SettingsError,
                     match=re.escape(f"--dataset is required: the config saved in {converted} names no dataset")):
    run_command(protocol="reconstruction", vqvae_workdir=str(converted), data_dir=data_dir, batch_size=8,
                output=str(tmp_path / "none.json"))
  out = run_command(protocol="reconstruction", vqvae_workdir=str(converted), dataset="moving_mnist/tiny",
                    data_dir=data_dir, batch_size=8, max_batches=1, output=str(tmp_path / "recon.json"))
  assert out["models"]["vqvae_step"] == 0 and out["data"]["dataset"] == "moving_mnist"
  assert out["data"]["seq_len"] == 8 and out["data"]["resolution"] == 32  # the original's hyper-parameters
  module, variables, config = inference.load_vqvae(converted)
  config.data.update(name="moving_mnist", builder_config="tiny", data_dir=data_dir)
  video = first_batch(config, 8)["video"].astype(np.float64)
  recon = np.asarray(jax.jit(lambda v: module.apply(variables, v, train=False)[0])(video.astype(np.float32)),
                     np.float64)
  assert out["metrics"]["n_videos"] == 8
  assert out["metrics"]["mse"] == pytest.approx(np.mean((recon - video) ** 2), rel=1e-4)
  assert out["metrics"]["nmse"] == pytest.approx(np.mean((recon - video) ** 2) / video.var(), rel=1e-4)
  gif = tmp_path / "recon.reconstruction_reconstructions.gif"  # originals above reconstructions
  assert gif.exists()


# ---------------------------------------------------------------------------------------------------------------
# Slow: trained models, I3D and C3D.
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fvd_conditions_on_real_frames_and_reuses_cached_real_features(trained, tmp_path, monkeypatch):
  calls = []
  real_i3d_logits = fvd.i3d_logits

  def counting(videos, *args, **kwargs):
    calls.append(len(videos))
    return real_i3d_logits(videos, *args, **kwargs)

  monkeypatch.setattr(fvd, "i3d_logits", counting)
  cache = tmp_path / "cache"
  common_flags = dict(protocol="fvd", gpt_workdir=str(trained["gpt"]), n_trials=2, clips_per_trial=2,
                      batch_size=4, num_devices=4, i3d_batch_size=2, cache_dir=str(cache))
  first = run_command(output=str(tmp_path / "fvd1.json"), **common_flags)
  m = first["metrics"]
  assert len(calls) == 3  # the real clips once, then each trial's samples
  assert m["n_cond_frames"] == 1 and m["real_features_cached"] is False
  assert len(m["fvd_trials"]) == 2 and all(math.isfinite(v) and v >= 0 for v in m["fvd_trials"])
  assert m["fvd"] == pytest.approx(np.mean(m["fvd_trials"])) and m["fvd_std"] == pytest.approx(
      np.std(m["fvd_trials"]))
  assert first["models"]["vqvae_workdir"] == str(trained["vqvae"])  # taken from the prior's config
  files = sorted(cache.glob("features_*.npz"))
  assert len(files) == 1
  mtimes = [f.stat().st_mtime_ns for f in files]

  calls.clear()
  second = run_command(output=str(tmp_path / "fvd2.json"), **common_flags)
  assert len(calls) == 2  # only the samples
  assert second["metrics"]["real_features_cached"] is True
  assert [f.stat().st_mtime_ns for f in sorted(cache.glob("features_*.npz"))] == mtimes
  assert second["metrics"]["fvd_trials"] == pytest.approx(m["fvd_trials"], rel=1e-6)  # same seed, same samples

  with pytest.raises(ValueError, match="clips_per_trial=17, but the split 'test' has 16 clips"):
    run_command(output=str(tmp_path / "fvd3.json"), **dict(common_flags, clips_per_trial=17))


@pytest.mark.slow
def test_fvd_star_against_reconstructions(trained, tmp_path):
  out = run_command(protocol="fvd_star", gpt_workdir=str(trained["gpt"]), vqvae_workdir=str(trained["vqvae"]),
                    n_trials=1, clips_per_trial=2, batch_size=4, num_devices=4, i3d_batch_size=2,
                    cache_dir=str(tmp_path / "cache"), output=str(tmp_path / "fvd_star.json"))
  m = out["metrics"]
  assert set(m) >= {"fvd_star", "fvd_star_std", "fvd_star_trials"} and "fvd" not in m
  assert math.isfinite(m["fvd_star"]) and m["fvd_star"] >= 0
  with np.load(next((tmp_path / "cache").glob("features_*.npz"))) as z:
    key = json.loads(str(z["key"]))
  vq_vars = inference.load_vqvae(trained["vqvae"], 2)[1]
  assert key["clips"] == "vqvae_reconstructions" and key["vqvae"] == fvd_eval.fingerprint(vq_vars)


@pytest.mark.slow
def test_reconstruction_with_r_fvd(trained, tmp_path):
  out = run_command(protocol="reconstruction", vqvae_workdir=str(trained["vqvae"]), r_fvd="true", batch_size=4,
                    num_devices=4, max_batches=1, i3d_batch_size=2, output=str(tmp_path / "recon.json"))
  m = out["metrics"]
  assert m["n_videos"] == 4 and out["models"]["vqvae_step"] == 2
  assert m["psnr"] > 0 and 0.0 <= m["ssim"] <= 1.0 and m["nmse"] > 0
  assert math.isfinite(m["r_fvd"]) and m["r_fvd"] >= 0


@pytest.mark.slow
def test_bits_per_dim_as_a_subprocess(trained, tmp_path):
  output = tmp_path / "bpd.json"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", "--protocol=bits_per_dim", f"--gpt_workdir={trained['gpt']}",
       "--batch_size=8", "--max_batches=1", f"--output={output}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "bits_per_dim/bits_per_dim:" in proc.stdout
  assert "bits_per_dim: batch 1/1" in proc.stderr  # progress
  m = json.loads(output.read_text())["metrics"]
  assert m["n_videos"] == 8 and m["n_cond_frames"] == 1
  # The prior's cross-entropy on the codes of the same clips, given their first frame, computed here.
  gpt, gpt_vars, gpt_config = inference.load_gpt(trained["gpt"])
  vqvae, vq_vars, _ = inference.load_vqvae(trained["vqvae"])
  batch = first_batch(gpt_config, 8, n_cond_frames=1)
  codes = vqvae.apply(vq_vars, batch["video"], method=type(vqvae).encode_to_indices)
  logits = gpt.apply(gpt_vars, codes, gpt.cond_from_batch(batch), deterministic=True)
  nats = float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, codes)))
  assert m["nats_per_dim"] == pytest.approx(nats, rel=1e-4)
  assert m["bits_per_dim"] == pytest.approx(nats / math.log(2), rel=1e-4)
  assert 0 < m["bits_per_dim"] < 2 * math.log2(gpt.n_codes)


@pytest.mark.slow
def test_inception_score_of_frame_conditional_samples(trained, tmp_path):
  weights, mean, _ = _write_chainer_npz(tmp_path)  # tiny random C3D in the published chainer npz format
  out = run_command(protocol="inception_score", gpt_workdir=str(trained["gpt"]), c3d_weights=str(weights),
                    c3d_mean=str(mean), num_samples=6, is_splits=2, batch_size=4, num_devices=4, c3d_batch_size=3,
                    output=str(tmp_path / "is.json"))
  m = out["metrics"]
  assert m["n_samples"] == 6 and m["splits"] == 2
  assert 1.0 - 1e-9 <= m["is"] <= 101.0 and m["is_std"] >= 0.0
