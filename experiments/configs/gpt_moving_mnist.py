r"""GPT prior on Moving MNIST codes (paper Table 8), unconditional, over a `vqvae_moving_mnist.py` run.

Launch (after training the VQ-VAE into /tmp/vqvae_moving_mnist):

  python -m experiments.train_gpt --config=experiments/configs/gpt_moving_mnist.py \
      --config.vqvae_workdir=/tmp/vqvae_moving_mnist --workdir=/tmp/gpt_moving_mnist

Smoke test (over the `:runlocal` VQ-VAE):

  python -m experiments.train_gpt --config=experiments/configs/gpt_moving_mnist.py:runlocal \
      --config.vqvae_workdir=/tmp/vqvae_moving_mnist_local --workdir=/tmp/gpt_moving_mnist_local
"""
from __future__ import annotations

import ml_collections

from experiments.configs import common_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False)
  config = common_config.gpt_base()
  config.data.name = "moving_mnist"
  config.data.builder_config = "default"
  config.data.seq_len = 16
  config.data.resolution = 64
  config.model = ml_collections.ConfigDict(dict(
      hidden_dim=192, heads=4, layers=8, attn_type="full", dropout=0.2, attn_dropout=0.3, n_cond_frames=0,
      class_cond=False, remat=False, remat_policy="full", scan_layers=False))
  config.batch_size = 32
  config.lr = 3e-4
  config.total_steps = 50_000
  if arg.runlocal:
    common_config.gpt_runlocal(config)
  return config
