"""Every wrong command ends in one line naming the flag or file, exit code 2, before JAX or TensorFlow start, and
creates nothing; a run that fails after start-up leaves no new workdir behind.

Each command runs as a subprocess with `JAX_PLATFORMS=tpu` (there is no TPU: a command that got as far as
initialising a JAX backend fails with a different message) and `TF_CPP_MIN_LOG_LEVEL=0` (importing TensorFlow
prints its start-up lines, so the output would not be one line). Elapsed times are pytest's `--durations`, a
record, not a claim.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from videogpt_jax import cli
from videogpt_jax.train import config_checks

ROOT = pathlib.Path(__file__).resolve().parents[1]
VQ = "--config=experiments/configs/vqvae_moving_mnist.py:runlocal"
GPT = "--config=experiments/configs/gpt_moving_mnist.py:runlocal"


def _fake_workdir(path: pathlib.Path, config: dict) -> None:
  """A workdir whose newest step's saved config is `config` (what the commands read before starting)."""
  (path / "checkpoints" / "5" / "config").mkdir(parents=True)
  (path / "checkpoints" / "5" / "config" / "metadata").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def place(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  (root / "a_file").write_text("not a folder\n")
  (root / "notes.txt").write_text("hello world\n")
  _fake_workdir(root / "vq", {"model": {"n_codes": 8}, "data": {"resolution": 16}})
  _fake_workdir(root / "gpt", {"model": {}, "vqvae_workdir": str(root / "vq"), "derived": {}})
  return root


# name -> (module and arguments ({p}: the module's tmp folder), expected exit code, words the line must hold)
CASES = {
    "batch_size=0": (["experiments.train_vqvae", VQ, "--workdir={p}/w", "--config.batch_size=0"], 2,
                     "--config.batch_size=0: must be a positive integer"),
    "batch_size=-4": (["experiments.train_vqvae", VQ, "--workdir={p}/w", "--config.batch_size=-4"], 2,
                      "--config.batch_size=-4"),
    "batch_size=eight": (["experiments.train_vqvae", VQ, "--workdir={p}/w", "--config.batch_size=eight"], 2,
                         "--config.batch_size=eight"),
    "unknown field": (["experiments.train_vqvae", VQ, "--workdir={p}/w", "--config.bach_size=8"], 2,
                      'Did you mean "batch_size"'),
    "missing config file": (["experiments.train_vqvae", "--config={p}/nope.py", "--workdir={p}/w"], 2,
                            "--config={p}/nope.py: cannot load it"),
    "unknown variant": (["experiments.train_vqvae", VQ.replace("runlocal", "bogus"), "--workdir={p}/w"], 2,
                        "unknown config argument 'bogus'"),
    "workdir is a file": (["experiments.train_vqvae", VQ, "--workdir={p}/a_file"], 2,
                          "--workdir={p}/a_file: is a file"),
    "workdir under a file": (["experiments.train_vqvae", VQ, "--workdir={p}/a_file/run"], 2, "is a file"),
    "no workdir": (["experiments.train_vqvae", VQ], 2, "--workdir"),
    "extra argument": (["experiments.train_vqvae", VQ, "--workdir={p}/w", "oops"], 2, "unexpected arguments: oops"),
    "unknown flag": (["experiments.train_vqvae", VQ, "--workdir={p}/w", "--bogus_flag=1"], 2, "bogus_flag"),
    "lr_schedule": (["experiments.train_vqvae", VQ, "--workdir={p}/w", "--config.lr_schedule=linear"], 2,
                    "--config.lr_schedule=linear: must be one of 'cosine', 'constant'"),
    "warmup too long": (["experiments.train_vqvae", VQ, "--workdir={p}/w", "--config.warmup_steps=100"], 2,
                        "--config.warmup_steps=100: must be smaller than config.total_steps=30"),
    "nan lr": (["experiments.train_vqvae", VQ, "--workdir={p}/w", "--config.lr=nan"], 2,
               "--config.lr=nan: must be a finite number"),
    "data_dir is a file": (["experiments.train_vqvae", VQ, "--workdir={p}/w", "--config.data.data_dir={p}/a_file"],
                           2, "--config.data.data_dir={p}/a_file: is a file"),
    "coordinator alone": (["experiments.train_vqvae", VQ, "--workdir={p}/w", "--coordinator_address=localhost:9"],
                          2, "--coordinator_address=localhost:9 needs --num_processes"),
    "gpt old sample_every": (["experiments.train_gpt", GPT, "--workdir={p}/w", "--config.sample_every=5"], 2,
                             "--config.sample_every has moved to --config.eval_options.samples.every"),
    "gpt without vqvae": (["experiments.train_gpt", GPT, "--workdir={p}/w"], 2, "--config.vqvae_workdir is required"),
    "gpt missing vqvae": (["experiments.train_gpt", GPT, "--workdir={p}/w", "--config.vqvae_workdir={p}/none"], 2,
                          "--config.vqvae_workdir={p}/none: no such folder"),
    "sample missing workdir": (["experiments.sample", "--gpt_workdir={p}/none", "--output={p}/s"], 2,
                               "--gpt_workdir={p}/none: no such folder"),
    "sample vqvae workdir": (["experiments.sample", "--gpt_workdir={p}/vq", "--output={p}/s"], 2,
                             "--gpt_workdir={p}/vq: holds a vqvae, not a prior"),
    "sample empty workdir": (["experiments.sample", "--gpt_workdir={p}", "--output={p}/s"], 2, "no checkpoint there"),
    "sample output is a file": (["experiments.sample", "--gpt_workdir={p}/gpt", "--output={p}/a_file"], 2,
                                "--output={p}/a_file: is a file"),
    "sample num_samples=0": (["experiments.sample", "--gpt_workdir={p}/gpt", "--output={p}/s", "--num_samples=0"],
                             2, "--num_samples=0"),
    "evaluate no protocol": (["experiments.evaluate"], 2, "--protocol"),
    "evaluate bad protocol": (["experiments.evaluate", "--protocol=bogus"], 2, "--protocol"),
    "evaluate no prior": (["experiments.evaluate", "--protocol=fvd"], 2, "--gpt_workdir is required"),
    "evaluate missing vqvae": (["experiments.evaluate", "--protocol=reconstruction", "--vqvae_workdir={p}/none"],
                               2, "--vqvae_workdir={p}/none"),
    "evaluate batch_size=0": (["experiments.evaluate", "--protocol=reconstruction", "--vqvae_workdir={p}/vq",
                               "--batch_size=0"], 2, "--batch_size must be >= 1"),
    "evaluate bad mesh": (["experiments.evaluate", "--protocol=reconstruction", "--vqvae_workdir={p}/vq",
                           "--mesh=a,b,c"], 2, "--mesh must be integers"),
    "evaluate output is a folder": (["experiments.evaluate", "--protocol=reconstruction", "--vqvae_workdir={p}/vq",
                                     "--output={p}/vq"], 2, "--output={p}/vq: is a folder"),
    "build manual_dir is a file": (["videogpt_jax.data.build", "--dataset=bair", "--data_dir={p}/tfds",
                                    "--manual_dir={p}/a_file"], 2, "--manual_dir={p}/a_file: is a file"),
    "build data_dir is a file": (["videogpt_jax.data.build", "--dataset=bair", "--data_dir={p}/a_file"], 2,
                                 "--data_dir={p}/a_file: is a file"),
    "build unknown dataset": (["videogpt_jax.data.build", "--dataset=imagenet", "--data_dir={p}/tfds"], 2,
                              "--dataset"),
    "convert missing input": (["videogpt_jax.convert", "--input={p}/none.ckpt", "--output={p}/c"], 2,
                              "--input={p}/none.ckpt: no such file"),
    "convert output not empty": (["videogpt_jax.convert", "--input={p}/notes.txt", "--output={p}/vq"], 2,
                                 "--output={p}/vq: already exists and is not empty"),
    "convert bad args_json": (["videogpt_jax.convert", "--input={p}/notes.txt", "--output={p}/c",
                               "--args_json={{"], 2, "--args_json: not valid JSON"),
    "convert text file": (["videogpt_jax.convert", "--input={p}/notes.txt", "--output={p}/c"], 1,
                          "{p}/notes.txt: not a PyTorch checkpoint"),
}


def _env(**extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TF_", "XLA_"))}
  env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="tpu", TF_CPP_MIN_LOG_LEVEL="0")
  env.update(extra)
  return env


def _tree(root: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# A few in the default run (each start costs seconds of imports); all of them in the slow run.
_DEFAULT = ("batch_size=0", "missing config file", "unknown variant", "workdir is a file", "sample vqvae workdir",
            "evaluate no prior", "build manual_dir is a file", "convert text file", "coordinator alone")


@pytest.mark.parametrize("name", [n if n in _DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(CASES)])
def test_wrong_command_is_one_line_and_exit_code_before_anything_starts(place, name):
  args, code, words = CASES[name]
  args = [a.format(p=place) for a in args]
  before = _tree(place)
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=300)
  lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
  assert len(lines) == 1, "\n".join(lines[-40:])
  assert lines[0].startswith("ERROR: ") and words.format(p=place) in lines[0], lines[0]
  assert proc.returncode == code, (proc.returncode, lines[0])
  assert _tree(place) == before, "a failed command created files"
  assert "backend" not in lines[0].lower(), "a JAX backend was initialised before the check"


def test_verbose_shows_the_traceback(place):
  proc = subprocess.run([sys.executable, "-m", "experiments.train_vqvae", VQ, f"--workdir={place}/w",
                         "--config.batch_size=0", "--verbose"], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


@pytest.mark.slow
def test_failure_after_start_up_leaves_no_new_workdir(tmp_path):
  """BAIR with an empty manual folder fails once the data is read, after TensorBoard's writer has started."""
  (tmp_path / "empty").mkdir()
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train_vqvae", "--config=experiments/configs/vqvae_bair.py:runlocal",
       f"--workdir={workdir}", f"--config.data.data_dir={tmp_path}/tfds",
       f"--config.data.manual_dir={tmp_path}/empty"],
      cwd=ROOT, env=_env(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=600)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert last.startswith("ERROR: ManualDataError") and "bair_robot_pushing_dataset_v0.tar" in last, last
  assert not workdir.exists()


def test_cleanup_keeps_what_is_worth_keeping(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(RuntimeError), cli.cleanup_on_failure(workdir):
    (workdir / "tensorboard").mkdir(parents=True)
    (workdir / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"x")
    (workdir / "checkpoints").mkdir()
    raise RuntimeError("failed at start-up")
  assert not workdir.exists()
  with pytest.raises(RuntimeError), cli.cleanup_on_failure(workdir):
    (workdir / "tensorboard").mkdir(parents=True)
    (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
    raise RuntimeError("failed after a step")
  assert (workdir / "metrics.jsonl").exists()
  existing = tmp_path / "existing"
  (existing / "tensorboard").mkdir(parents=True)
  with pytest.raises(RuntimeError), cli.cleanup_on_failure(existing):
    raise RuntimeError("an existing workdir is never touched")
  assert (existing / "tensorboard").is_dir()


def test_build_knows_every_dataset():
  # In its own interpreter: `data.build` defines absl flags at import (`--config` among them), which would clash
  # with the other entry points' flags in this process.
  code = ("from videogpt_jax.data import build, builders; "
          "print(build.DATASETS == tuple(sorted(builders.BUILDERS)))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
  assert out.stdout.strip().splitlines()[-1] == "True", out.stdout + out.stderr


def test_config_checks_name_the_field():
  from experiments.configs import gpt_bair, vqvae_bair
  config_checks.check_train_config(vqvae_bair.get_config("runlocal"), "vqvae")
  gpt = gpt_bair.get_config("runlocal")
  with pytest.raises(config_checks.ConfigError, match="--config.vqvae_workdir is required"):
    config_checks.check_train_config(gpt, "gpt")
  for field, value, words in (("mesh", (2, -1, -1), "--config.mesh"), ("keep_checkpoints", 0, "positive"),
                              ("compute_dtype", "float8", "must be one of"), ("grad_clip", -1.0, ">= 0"),
                              ("adam_b2", 1.0, "below 1")):
    config = vqvae_bair.get_config("runlocal")
    with config.unlocked():
      config[field] = value
    with pytest.raises(config_checks.ConfigError, match=words):
      config_checks.check_train_config(config, "vqvae")



def test_an_older_gpt_config_that_sets_sample_every_or_num_samples_is_told_where_they_moved(tmp_path):
  from experiments.configs import gpt_bair
  fresh = gpt_bair.get_config("runlocal")
  fresh.vqvae_workdir = str(tmp_path)
  config_checks.check_train_config(fresh, "gpt")
  for old, value, new in (("sample_every", 100, "eval_options.samples.every"),
                          ("num_samples", 4, "eval_options.samples.num_samples")):
    config = gpt_bair.get_config("runlocal")
    config.vqvae_workdir = str(tmp_path)
    with config.unlocked():
      config[old] = value
    with pytest.raises(config_checks.ConfigError, match=rf"^--config.{old} has moved to --config.{new}"):
      config_checks.check_train_config(config, "gpt")
  config = gpt_bair.get_config("runlocal")
  config.vqvae_workdir = str(tmp_path)
  config.eval_options.samples.num_samples = 0
  with pytest.raises(config_checks.ConfigError, match="--config.eval_options.samples.num_samples=0: must be a pos"):
    config_checks.check_train_config(config, "gpt")
