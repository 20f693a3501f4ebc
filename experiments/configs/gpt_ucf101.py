r"""GPT prior on UCF-101 codes, unconditional (default) or class-conditional (`:classcond`).

Paper: 20 layers, 8 heads, hidden 1024, 200k steps. 1024 does not divide by 3 (the original's per-axis position
embedding needs it); 1032 is the nearest width that divides by 3 and by 8 heads.

  python -m experiments.train_gpt --config=experiments/configs/gpt_ucf101.py \
      --config.vqvae_workdir=/tmp/vqvae_ucf101 --config.data.manual_dir=/data/ucf101 --workdir=/tmp/gpt_ucf101
  python -m experiments.train_gpt --config=experiments/configs/gpt_ucf101.py:classcond \
      --config.vqvae_workdir=/tmp/vqvae_ucf101 --config.data.manual_dir=/data/ucf101 --workdir=/tmp/gpt_ucf101_cc

Smoke test: `--config=experiments/configs/gpt_ucf101.py:classcond,runlocal`.
"""
from __future__ import annotations

import ml_collections

from experiments.configs import common_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, tpu=False, variant="uncond")
  if arg.variant not in ("uncond", "classcond"):
    raise ValueError(f"unknown gpt_ucf101 variant {arg.variant!r}; expected 'uncond' or 'classcond'")
  config = common_config.gpt_base()
  config.data.name = "ucf101"
  config.data.seq_len = 16
  config.data.resolution = 128
  config.data.num_classes = 101
  config.model = ml_collections.ConfigDict(dict(
      # The original's sparse attention has no attention dropout (its args' 0.3 is ignored by the kernel).
      hidden_dim=1032, heads=8, layers=20, attn_type="sparse", sparse_block=32, sparse_local_blocks=4,
      dropout=0.2, attn_dropout=0.0, n_cond_frames=0, class_cond=arg.variant == "classcond", remat=False,
      # `scan_layers=True` runs the blocks under nn.scan (one layer compiled); remat_policy: gpt.REMAT_POLICIES.
      remat_policy="full", scan_layers=False,
      # The attention implementation: "xla" on every backend (parity with the original). On TPU,
      # `--config.model.attn_kernel=splash` runs the Pallas splash kernel (videogpt_jax/models/splash_attention.py),
      # which has no attention dropout: it needs attn_dropout=0, as here.
      attn_kernel="xla"))
  config.batch_size = 32
  config.lr = 3e-4
  config.total_steps = 200_000
  if arg.tpu:
    common_config.tpu(config)
  if arg.runlocal:
    common_config.gpt_runlocal(config, dataset="ucf101")
  return config
