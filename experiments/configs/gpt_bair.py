r"""GPT prior on BAIR codes, conditioned on 1 frame (paper: 16 layers, 4 heads, batch 32, 150k steps, sparse
attention, dropout 0.2 / attention dropout 0.3, Adam 3e-4 with cosine decay).

The paper's hidden width 512 does not divide by 3, which the original's concatenated per-axis position embedding
requires; we use the original code's default 576.

  python -m experiments.train_gpt --config=experiments/configs/gpt_bair.py \
      --config.vqvae_workdir=/tmp/vqvae_bair --config.data.manual_dir=/data/bair --workdir=/tmp/gpt_bair

Optionally pre-encode the codes once and train from them:

  python -m videogpt_jax.train.encode_dataset --config=experiments/configs/gpt_bair.py \
      --config.vqvae_workdir=/tmp/vqvae_bair --output=/tmp/bair_codes.npz
  python -m experiments.train_gpt --config=experiments/configs/gpt_bair.py --config.vqvae_workdir=/tmp/vqvae_bair \
      --config.codes_path=/tmp/bair_codes.npz --workdir=/tmp/gpt_bair

Smoke test (tiny prior over a `vqvae_bair.py:runlocal` run): `--config=experiments/configs/gpt_bair.py:runlocal`.
"""
from __future__ import annotations

import ml_collections

from experiments.configs import common_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, tpu=False)
  config = common_config.gpt_base()
  config.data.name = "bair"
  config.data.seq_len = 16
  config.data.resolution = 64
  config.model = ml_collections.ConfigDict(dict(
      # The original's sparse attention has no attention dropout (its args' 0.3 is ignored by the kernel).
      hidden_dim=576, heads=4, layers=16, attn_type="sparse", sparse_block=32, sparse_local_blocks=4,
      dropout=0.2, attn_dropout=0.0, n_cond_frames=1, class_cond=False, remat=False,
      # `scan_layers=True` runs the blocks under nn.scan (one layer compiled); remat_policy: gpt.REMAT_POLICIES.
      remat_policy="full", scan_layers=False,
      # The attention implementation: "xla" on every backend (parity with the original). On TPU,
      # `--config.model.attn_kernel=splash` runs the Pallas splash kernel (videogpt_jax/models/splash_attention.py),
      # which has no attention dropout: it needs attn_dropout=0, as here.
      attn_kernel="xla"))
  config.batch_size = 32
  config.lr = 3e-4
  config.total_steps = 150_000
  if arg.tpu:
    common_config.tpu(config)
  if arg.runlocal:
    common_config.gpt_runlocal(config, dataset="bair")
  return config
