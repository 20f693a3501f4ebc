r"""VQ-VAE on BAIR robot pushing, 16x64x64 clips.

Variants: `8x32x32` (default, paper Table 8: downsample (2, 2, 2), K=1024, D=256, lr 7e-4, 100k steps, batch 32)
and `4x32x32` (the original's released `bair_stride4x2x2`: downsample (4, 2, 2), K=2048, D=256).
BAIR must be downloaded by hand (`bair_robot_pushing_dataset_v0.tar` into --config.data.manual_dir; the builder's
error says exactly what to put where).

  python -m experiments.train_vqvae --config=experiments/configs/vqvae_bair.py \
      --config.data.manual_dir=/data/bair --workdir=/tmp/vqvae_bair
  python -m experiments.train_vqvae --config=experiments/configs/vqvae_bair.py:4x32x32 \
      --config.data.manual_dir=/data/bair --workdir=/tmp/vqvae_bair_4x32x32

Smoke test (tiny model, same data): append `,runlocal` (or `:runlocal`) to the config argument.
"""
from __future__ import annotations

import ml_collections

from experiments.configs import common_config, parse_arg

VARIANTS = {
    "8x32x32": dict(downsample=(2, 2, 2), n_codes=1024, lr=7e-4),
    "4x32x32": dict(downsample=(4, 2, 2), n_codes=2048, lr=3e-4),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, tpu=False, variant="8x32x32")
  if arg.variant not in VARIANTS:
    raise ValueError(f"unknown vqvae_bair variant {arg.variant!r}; expected one of {sorted(VARIANTS)}")
  v = VARIANTS[arg.variant]
  config = common_config.vqvae_base()
  config.data.name = "bair"
  config.data.seq_len = 16
  config.data.resolution = 64
  config.model = ml_collections.ConfigDict(dict(
      embedding_dim=256, n_codes=v["n_codes"], n_hiddens=240, n_res_layers=4, downsample=v["downsample"],
      attention=True, conv_impl="auto", remat=False,
      # The axial attention's implementation: "xla" (parity with the original); `:tpu` picks "pallas", one fused
      # kernel per axis (videogpt_jax/models/axial_kernel.py), which is the XLA path off TPU.
      attn_kernel="xla"))
  config.batch_size = 32
  config.lr = v["lr"]
  config.total_steps = 100_000
  if arg.tpu:
    common_config.tpu(config)
  if arg.runlocal:
    common_config.vqvae_runlocal(config, dataset="bair")
  return config
