"""Two local processes (4 simulated CPU devices each, gloo collectives over loopback) train like one of 8: the
VQ-VAE data-parallel and on an fsdp x model mesh, and the prior on an fsdp x model mesh."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.train.synthetic import SyntheticIterator
from tests.train.test_vqvae_trainer import tiny_config
from videogpt_jax import checkpointing
from videogpt_jax.train import vqvae_trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Runs in each process, and (with `ROOT/single`) in this one over all 8 devices; argv: the output root.
STAGES = """
import json, pathlib, sys
import jax
from tests.train.synthetic import SyntheticIterator
from tests.train.test_gpt_trainer import tiny_config as prior_config
from tests.train.test_vqvae_trainer import tiny_config
from videogpt_jax.train import gpt_trainer, vqvae_trainer
root = pathlib.Path(sys.argv[1])

def run(trainer, config, name):
  result = trainer.train_and_evaluate(config, root / name, train_iter=SyntheticIterator(config))
  with open(root / f"{name}_losses_{jax.process_index()}.json", "w") as f:
    json.dump([m["loss"] for _, m in result.history], f)

run(vqvae_trainer, tiny_config(mesh=(-1, 1, 1), num_devices=-1, total_steps=4, checkpoint_every=2, log_every=1),
    "vqvae")
# fsdp spans the two processes; model stays within each.
run(vqvae_trainer, tiny_config(mesh=(1, 4, 2), num_devices=-1, total_steps=3, checkpoint_every=3, log_every=1),
    "vqvae_fsdp_model")
run(gpt_trainer, prior_config(sys.argv[2], mesh=(1, 4, 2), num_devices=-1, total_steps=3, checkpoint_every=3,
                              log_every=1), "prior_fsdp_model")
"""

WORKER = """
from videogpt_jax.train import common
common.initialize_distributed()  # from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
import jax
assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
""" + STAGES


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def vqvae_workdir(tmp_path_factory):
  """The VQ-VAE the priors model (trained once, in this process)."""
  workdir = tmp_path_factory.mktemp("vqvae_for_prior")
  config = tiny_config(total_steps=2, checkpoint_every=2)
  vqvae_trainer.train_and_evaluate(config, workdir, train_iter=SyntheticIterator(config))
  return workdir


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_process_and_checkpoint(tmp_path, vqvae_workdir):
  port = _free_port()
  procs = []
  for i in range(2):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT), JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i), TF_CPP_MIN_LOG_LEVEL="2")
    procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "multi"), str(vqvae_workdir)],
                                  cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=500)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]

  # The same stages in this process over its 8 devices.
  subprocess.run([sys.executable, "-c", STAGES, str(tmp_path / "single"), str(vqvae_workdir)], cwd=ROOT, check=True,
                 env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
                          PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2"), timeout=500)
  for name, steps in (("vqvae", 4), ("vqvae_fsdp_model", 3), ("prior_fsdp_model", 3)):
    want = json.loads((tmp_path / "single" / f"{name}_losses_0.json").read_text())
    assert len(want) == steps
    for i in range(2):
      got = json.loads((tmp_path / "multi" / f"{name}_losses_{i}.json").read_text())
      np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"{name}, process {i}")
  # Process 0 alone writes the metrics; both wrote their shards of each checkpoint.
  assert len((tmp_path / "multi" / "vqvae" / "metrics.jsonl").read_text().splitlines()) == 4
  assert sorted(checkpointing.Checkpointer(tmp_path / "multi" / "vqvae" / "checkpoints").all_steps()) == [2, 4]
  assert checkpointing.Checkpointer(tmp_path / "multi" / "prior_fsdp_model" / "checkpoints").all_steps() == [3]
