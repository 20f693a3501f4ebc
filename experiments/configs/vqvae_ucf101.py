r"""VQ-VAE on UCF-101 (fold 1), 16x128x128 clips -> 4x32x32 codes (the original's released `ucf101_stride4x4x4`:
K=2048, D=256, 240 hiddens, 4 attention residual layers).

UCF-101 must be downloaded by hand (videos and the fold-1 split lists into --config.data.manual_dir; the builder's
error says exactly what to put where).

  python -m experiments.train_vqvae --config=experiments/configs/vqvae_ucf101.py \
      --config.data.manual_dir=/data/ucf101 --workdir=/tmp/vqvae_ucf101

Smoke test (tiny model, same data): `--config=experiments/configs/vqvae_ucf101.py:runlocal`.
"""
from __future__ import annotations

import ml_collections

from experiments.configs import common_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, tpu=False)
  config = common_config.vqvae_base()
  config.data.name = "ucf101"
  config.data.seq_len = 16
  config.data.resolution = 128
  config.model = ml_collections.ConfigDict(dict(
      embedding_dim=256, n_codes=2048, n_hiddens=240, n_res_layers=4, downsample=(4, 4, 4), attention=True,
      conv_impl="auto", remat=False,
      attn_kernel="xla"))  # `:tpu` picks "pallas" (see vqvae_bair.py)
  config.batch_size = 32
  config.lr = 3e-4
  config.total_steps = 100_000
  if arg.tpu:
    common_config.tpu(config)
  if arg.runlocal:
    common_config.vqvae_runlocal(config, dataset="ucf101")
  return config
