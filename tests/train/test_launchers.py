"""Entry points and configs: every config loads, overrides are checked, kill -9 + resume, missing data."""
from __future__ import annotations

import importlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from experiments import launch

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = {
    "vqvae_moving_mnist": [None], "vqvae_bair": [None, "4x32x32"], "vqvae_ucf101": [None],
    "gpt_moving_mnist": [None], "gpt_bair": [None], "gpt_ucf101": [None, "classcond"],
}


def _env(devices: int = 2, **extra) -> dict[str, str]:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONPATH=str(ROOT),
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env.update(extra)
  return env


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_and_its_runlocal_variant_load(name):
  module = importlib.import_module(f"experiments.configs.{name}")
  assert "python -m experiments.train_" in module.__doc__ and f"configs/{name}.py" in module.__doc__
  for variant in CONFIGS[name]:
    for arg in ([variant] if variant else [None]) + [",".join(filter(None, [variant, "runlocal"]))]:
      config = module.get_config(arg)
      assert isinstance(config, ml_collections.ConfigDict) and config.total_steps > 0
      if arg and "runlocal" in arg:
        assert config.total_steps <= 50 and config.data.resolution <= 16 and config.batch_size <= 8
  with pytest.raises(ValueError, match="unknown config argument"):
    module.get_config("bogus=1")


def test_paper_settings():
  from experiments.configs import gpt_bair, gpt_ucf101, vqvae_bair, vqvae_moving_mnist
  bair = vqvae_bair.get_config()
  assert tuple(bair.model.downsample) == (2, 2, 2) and bair.model.n_codes == 1024 and bair.lr == 7e-4
  assert tuple(vqvae_bair.get_config("4x32x32").model.downsample) == (4, 2, 2)
  mm = vqvae_moving_mnist.get_config()
  assert (mm.model.n_codes, mm.model.embedding_dim, mm.model.n_res_layers, mm.model.attention) == (512, 64, 2, False)
  assert gpt_bair.get_config().model.n_cond_frames == 1
  assert gpt_ucf101.get_config("classcond").model.class_cond and not gpt_ucf101.get_config().model.class_cond


@pytest.mark.parametrize("name,variant", [("vqvae_bair", None), ("vqvae_ucf101", None), ("gpt_bair", None),
                                          ("gpt_ucf101", "classcond")])
def test_tpu_argument(name, variant):
  """`:tpu` changes what runs, not the model: bf16 compute, and for priors remat, scanned blocks and splash; for
  VQ-VAEs the fused axial-attention kernel."""
  module = importlib.import_module(f"experiments.configs.{name}")
  plain, tpu = module.get_config(variant), module.get_config(",".join(filter(None, [variant, "tpu"])))
  assert plain.compute_dtype == "float32" and tpu.compute_dtype == "bfloat16"
  changed = {k for k in plain.model if plain.model[k] != tpu.model[k]}
  if name.startswith("gpt"):
    assert changed == {"remat", "scan_layers", "attn_kernel"} and tpu.model.attn_kernel == "splash"
    assert plain.model.attn_kernel == "xla" and tpu.model.remat and tpu.model.scan_layers
  else:
    assert changed == {"attn_kernel"} and (plain.model.attn_kernel, tpu.model.attn_kernel) == ("xla", "pallas")
  from experiments.configs import common_config  # pylint: disable=import-outside-toplevel
  if name.startswith("gpt"):
    dropout = module.get_config(variant)
    dropout.model.attn_dropout = 0.3
    with pytest.raises(ValueError, match="splash attention, which has no attention dropout"):
      common_config.tpu(dropout)


def _launch(*args, devices=2, **env):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_env(devices, **env), capture_output=True,
                        text=True, timeout=600)


def test_unknown_or_ill_typed_override_is_a_clear_error(tmp_path):
  base = ["experiments.train_vqvae", "--config=experiments/configs/vqvae_moving_mnist.py:runlocal",
          f"--workdir={tmp_path}"]
  unknown = _launch(*base, "--config.bach_size=8")
  assert unknown.returncode == 2 and "Traceback" not in unknown.stderr, unknown.stderr[-2000:]
  assert "unknown config field" in unknown.stderr and 'Did you mean "batch_size"' in unknown.stderr
  typed = _launch(*base, "--config.batch_size=eight")
  assert typed.returncode != 0 and "Traceback" not in typed.stderr, typed.stderr[-2000:]
  assert "--config.batch_size=eight" in typed.stderr and "invalid literal for int()" in typed.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_missing_dataset_gives_the_builders_instructions(tmp_path):
  from experiments.configs import vqvae_bair
  from videogpt_jax.data.builders import ManualDataError
  from videogpt_jax.train import inputs
  config = vqvae_bair.get_config("runlocal")
  config.data.data_dir = str(tmp_path / "data")
  config.data.manual_dir = str(tmp_path / "empty")
  with pytest.raises(ManualDataError, match="bair_robot_pushing_dataset_v0.tar"):
    inputs.load_builder(config)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """The tiny Moving MNIST, built once for the end-to-end runs."""
  from videogpt_jax.data import builders
  path = tmp_path_factory.mktemp("tfds")
  builders.load_builder("moving_mnist", path, config="tiny")
  return path


def _losses(workdir: pathlib.Path) -> dict[int, float]:
  out = {}
  for line in open(workdir / "metrics.jsonl"):
    record = json.loads(line)
    out[record["step"]] = record["loss"]
  return out


@pytest.mark.slow
def test_kill_9_then_resume_continues_with_identical_losses(tfds_dir, tmp_path):
  args = ["experiments.train_vqvae", "--config=experiments/configs/vqvae_moving_mnist.py:runlocal",
          "--config.total_steps=16", "--config.checkpoint_every=4", "--config.log_every=1",
          "--config.eval_every=0", "--config.tensorboard=False"]
  ref = _launch(*args, f"--workdir={tmp_path / 'ref'}", TFDS_DATA_DIR=str(tfds_dir))
  assert ref.returncode == 0, ref.stderr[-3000:]
  want = _losses(tmp_path / "ref")
  assert sorted(want) == list(range(1, 17))

  workdir = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "-m", *args, f"--workdir={workdir}"], cwd=ROOT,
                          env=_env(2, TFDS_DATA_DIR=str(tfds_dir)), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None:
    if (workdir / "checkpoints" / "8").exists() and max(_losses(workdir), default=0) >= 9:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(_losses(workdir))
  assert killed_at < 16

  resumed = _launch(*args, f"--workdir={workdir}", TFDS_DATA_DIR=str(tfds_dir))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  restored_from = int(resumed.stderr.split("resuming from step ")[1].split()[0])
  assert 8 <= restored_from <= killed_at
  got = _losses(workdir)
  assert sorted(got) == list(range(1, 17))
  rows = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows == list(range(1, 17)), "a resumed run must replace the rows of the steps it trains again"
  for step in range(restored_from + 1, 17):
    assert got[step] == pytest.approx(want[step], rel=1e-6, abs=0), step


@pytest.mark.slow
def test_runlocal_vqvae_then_gpt_then_sample(tfds_dir, tmp_path):
  """The documented smoke test: both stages train (losses fall) on real Moving MNIST, then sampling writes a GIF."""
  vq = _launch("experiments.train_vqvae", "--config=experiments/configs/vqvae_moving_mnist.py:runlocal",
               f"--workdir={tmp_path / 'vq'}", TFDS_DATA_DIR=str(tfds_dir))
  assert vq.returncode == 0, vq.stderr[-3000:]
  gpt = _launch("experiments.train_gpt", "--config=experiments/configs/gpt_moving_mnist.py:runlocal",
                f"--config.vqvae_workdir={tmp_path / 'vq'}", f"--workdir={tmp_path / 'gpt'}",
                TFDS_DATA_DIR=str(tfds_dir))
  assert gpt.returncode == 0, gpt.stderr[-3000:]
  for stage in ("vq", "gpt"):
    loss = [v for _, v in sorted(_losses(tmp_path / stage).items())]
    assert sum(loss[-5:]) < 0.8 * sum(loss[:5]), (stage, loss)
    assert list((tmp_path / stage / "tensorboard").glob("events.out.tfevents.*"))
  sample = _launch("experiments.sample", f"--gpt_workdir={tmp_path / 'gpt'}", f"--output={tmp_path / 's'}",
                   "--num_samples=2", TFDS_DATA_DIR=str(tfds_dir))
  assert sample.returncode == 0, sample.stderr[-3000:]
  assert (tmp_path / "s" / "samples.gif").stat().st_size > 0


def _record(pathname: str, level: int, msg: str, *args) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, msg, args, None)


def test_quiet_libraries_filter():
  quiet = launch.QuietLibraries()
  tfds_path = "/v/site-packages/tensorflow_datasets/core/features/feature.py"
  tf_path = "/v/site-packages/tensorflow/python/util/deprecation.py"
  # Library INFO is dropped, project INFO kept.
  assert not quiet.filter(_record("/v/site-packages/orbax/checkpoint/x.py", logging.INFO, "saving"))
  assert quiet.filter(_record("/repo/videogpt_jax/train/loop.py", logging.INFO, "step 1"))
  # The libraries' notices about their own internals are dropped (also when formatted from args) ...
  assert not quiet.filter(_record(tfds_path, logging.WARNING, "`TensorInfo.dtype` is deprecated. Please ..."))
  assert not quiet.filter(_record(tf_path, logging.WARNING, "From %s: calling %s (from %s) is deprecated",
                                  "x.py:1", "map_fn_v2", "tf"))
  # ... but their other warnings, and the same words from project code, still show.
  assert quiet.filter(_record(tfds_path, logging.WARNING, "manual_dir is empty"))
  assert quiet.filter(_record("/repo/videogpt_jax/data/x.py", logging.WARNING, "`TensorInfo.dtype` is deprecated"))
