r"""Trains the VQ-VAE (stage 1).

  python -m experiments.train_vqvae --config=experiments/configs/vqvae_moving_mnist.py:runlocal \
      --workdir=/tmp/vqvae --config.batch_size=8

Re-running with the same --workdir resumes from its latest checkpoint. Multi-host: also pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or the JAX_* environment variables).
"""
from __future__ import annotations

from absl import app

from experiments import launch


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  launch.setup()
  from videogpt_jax.train import vqvae_trainer
  launch.run_reporting_errors(lambda: vqvae_trainer.train_and_evaluate(launch.FLAGS.config, launch.FLAGS.workdir))


if __name__ == "__main__":
  launch.define_flags("Checkpoints, TensorBoard events and metrics.jsonl go here.")
  launch.run(main)
