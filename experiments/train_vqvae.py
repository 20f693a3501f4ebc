r"""Trains the VQ-VAE (stage 1).

  python -m experiments.train_vqvae --config=experiments/configs/vqvae_moving_mnist.py:runlocal \
      --workdir=/tmp/vqvae --config.batch_size=8

Re-running with the same --workdir resumes from its latest checkpoint. Multi-host: also pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or the JAX_* environment variables).
"""
from __future__ import annotations

from experiments import launch
from videogpt_jax import cli


def main(argv):
  cli.no_extra_args(argv)
  launch.check_flags("vqvae")
  launch.setup()
  # Imported once the flags are checked: the trainer's input pipeline imports TensorFlow, which logs on import.
  from videogpt_jax.train import vqvae_trainer  # pylint: disable=import-outside-toplevel
  with cli.cleanup_on_failure(launch.FLAGS.workdir):
    vqvae_trainer.train_and_evaluate(launch.FLAGS.config, launch.FLAGS.workdir)


if __name__ == "__main__":
  launch.define_flags("Checkpoints, TensorBoard events and metrics.jsonl go here.")
  cli.run(main)
