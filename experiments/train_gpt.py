r"""Trains the GPT prior (stage 2) over a trained VQ-VAE's codes.

  python -m experiments.train_gpt --config=experiments/configs/gpt_moving_mnist.py:runlocal \
      --config.vqvae_workdir=/tmp/vqvae --workdir=/tmp/gpt

Re-running with the same --workdir resumes from its latest checkpoint. Multi-host flags as in train_vqvae.py.
"""
from __future__ import annotations

from experiments import launch
from videogpt_jax import cli


def main(argv):
  cli.no_extra_args(argv)
  launch.check_flags("gpt")
  launch.setup()
  # Imported once the flags are checked: the trainer's input pipeline imports TensorFlow, which logs on import.
  from videogpt_jax.train import gpt_trainer  # pylint: disable=import-outside-toplevel
  with cli.cleanup_on_failure(launch.FLAGS.workdir):
    gpt_trainer.train_and_evaluate(launch.FLAGS.config, launch.FLAGS.workdir)


if __name__ == "__main__":
  launch.define_flags("Checkpoints, TensorBoard events and metrics.jsonl go here.")
  cli.run(main)
