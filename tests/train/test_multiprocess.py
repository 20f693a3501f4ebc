"""Two local processes (4 simulated CPU devices each, gloo collectives over loopback) train like one of 8."""
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

WORKER = """
import json, sys
from videogpt_jax.train import common
common.initialize_distributed()  # from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
import jax
assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
from tests.train.synthetic import SyntheticIterator
from tests.train.test_vqvae_trainer import tiny_config
from videogpt_jax.train import vqvae_trainer
config = tiny_config(mesh=(-1, 1, 1), num_devices=-1, total_steps=4, checkpoint_every=2, log_every=1)
result = vqvae_trainer.train_and_evaluate(config, sys.argv[1], train_iter=SyntheticIterator(config))
with open(f"{sys.argv[1]}/losses_{jax.process_index()}.json", "w") as f:
  json.dump([m["loss"] for _, m in result.history], f)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_process_and_checkpoint(tmp_path):
  port = _free_port()
  procs = []
  for i in range(2):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT), JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i), TF_CPP_MIN_LOG_LEVEL="2")
    procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "multi")], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=500)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]

  config = tiny_config(mesh=(-1, 1, 1), num_devices=8, total_steps=4, checkpoint_every=2, log_every=1)
  single = vqvae_trainer.train_and_evaluate(config, tmp_path / "single", train_iter=SyntheticIterator(config))
  want = [m["loss"] for _, m in single.history]
  for i in range(2):
    got = json.loads((tmp_path / "multi" / f"losses_{i}.json").read_text())
    np.testing.assert_allclose(got, want, rtol=1e-5)
  # Process 0 alone writes the metrics; both wrote their shards of each checkpoint.
  assert len((tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()) == 4
  assert sorted(checkpointing.Checkpointer(tmp_path / "multi" / "checkpoints").all_steps()) == [2, 4]
