"""Defaults shared by the configs: run bookkeeping, optimizer, mesh, and the tiny `runlocal` shapes."""
from __future__ import annotations

import ml_collections


def _base() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Mesh (data, fsdp, model); -1 takes the remaining devices. num_devices=-1 uses all (a prefix: tests only).
  config.mesh = (-1, 1, 1)
  config.num_devices = -1
  config.batch_size = 32
  config.eval_batch_size = 0  # 0: same as batch_size
  config.total_steps = 100_000
  # Adam with the original's cosine decay to 0 at total_steps (no warmup), global-norm clipping.
  config.lr = 3e-4
  config.lr_schedule = "cosine"
  config.warmup_steps = 0
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.grad_clip = 1.0
  # "bfloat16": bf16 compute over float32 parameters and optimizer state (both stages).
  config.compute_dtype = "float32"
  # Rematerialisation is `config.model.remat` (per residual / transformer block, both stages).
  # "cpu" | "gpu" | "tpu": the platform the models' formulations are chosen for; "": that of the mesh's devices.
  config.platform = ""
  config.log_every = 50
  # Evaluators of this stage (videogpt_jax/evaluation/evaluators/<name>.py, format in evaluation/suite.py):
  # `eval_options.<name>` holds that evaluator's keyword options, `every` its own period in steps.
  config.evals = ()
  config.eval_options = ml_collections.ConfigDict()
  config.eval_every = 5_000
  config.eval_batches = 8  # 0: the whole eval split (evaluators that take max_batches)
  config.checkpoint_every = 1_000
  config.keep_checkpoints = 3
  config.best_metric = "loss"  # kept beside the last `keep_checkpoints` (train loss at the save step)
  config.best_mode = "min"
  config.tensorboard = True
  config.data = ml_collections.ConfigDict(dict(
      name="", builder_config="", data_dir="", manual_dir="",
      split="train", eval_split="test", seq_len=16, resolution=64, shuffle_buffer=2048,
      num_classes=0,  # 0: read from the dataset (class-conditional priors)
      # Preprocessing op strings (videogpt_jax/data/preprocess_ops.py, e.g. "random_window(16)|decode_video|
      # resize_smaller(64)|center_crop(64)|gray_to_rgb|value_range(-0.5,0.5)"; a frame-conditional prior's end
      # with "|cond_frames(n)"). "": the original's preprocessing for seq_len and resolution.
      pp_train="", pp_eval=""))
  return config


def vqvae_base() -> ml_collections.ConfigDict:
  config = _base()
  config.evals = ("reconstruction",)
  return config


def gpt_base() -> ml_collections.ConfigDict:
  config = _base()
  config.vqvae_workdir = ""  # required: the VQ-VAE run whose codes the prior models
  config.vqvae_step = -1  # -1: its latest checkpoint
  config.codes_path = ""  # optional: codes pre-encoded by `videogpt_jax.train.encode_dataset` (else on the fly)
  config.best_metric = "loss"
  # Test bits/dim and TensorBoard samples (conditioned on test clips if the prior is conditional). FVD: add "fvd"
  # (clips of >= 9 frames; options named as experiments.evaluate's flags).
  config.evals = ("bits_per_dim", "samples")
  config.eval_options.samples = ml_collections.ConfigDict(dict(every=10_000, num_samples=8))  # every=0: no samples
  return config


def tpu(config: ml_collections.ConfigDict) -> None:
  """The `tpu` config argument: how the paper configs run on TPU slices (docs/scaling.md; each is compiled for its
  slice by `benchmarks/tpu_compile.py`). bf16 compute over float32 parameters; a prior also rematerialises each
  block, runs the blocks under `nn.scan` (one layer compiled) and its attention in Pallas splash kernels (which
  have no attention dropout: the paper configs' sparse attention has none); a VQ-VAE runs each axis of its axial
  attention as one fused Pallas kernel (`axial_kernel`). Parity with the original stays the default (no `tpu`):
  float32, the XLA attention, the loop form."""
  config.compute_dtype = "bfloat16"
  if "vqvae_workdir" in config:  # a prior
    if config.model.attn_dropout:
      raise ValueError("the tpu config argument runs splash attention, which has no attention dropout; "
                       f"this config has attn_dropout={config.model.attn_dropout}")
    config.model.update(dict(remat=True, scan_layers=True, attn_kernel="splash"))
  elif config.model.get("attention", True):  # a VQ-VAE with axial attention
    config.model.attn_kernel = "pallas"


def _tiny_data(config: ml_collections.ConfigDict, dataset: str) -> None:
  """4-frame 16x16 clips; Moving MNIST uses its 32-clip `tiny` build (other datasets keep their real data)."""
  if dataset == "moving_mnist":
    config.data.builder_config = "tiny"
  config.data.seq_len = 4
  config.data.resolution = 16
  config.data.shuffle_buffer = 64


def vqvae_runlocal(config: ml_collections.ConfigDict, dataset: str = "moving_mnist") -> None:
  """A tiny VQ-VAE: 4x16x16 clips -> 2x4x4 codes; ~20 s on 2 CPU cores (without contention)."""
  _tiny_data(config, dataset)
  config.model = ml_collections.ConfigDict(dict(
      embedding_dim=8, n_codes=32, n_hiddens=16, n_res_layers=1, downsample=(2, 4, 4), attention=False,
      conv_impl="auto", remat=False))
  config.batch_size = 4
  config.lr = 3e-3
  config.total_steps = 30
  config.log_every = 5
  config.eval_every = 30
  config.eval_batches = 1
  config.checkpoint_every = 10


def gpt_runlocal(config: ml_collections.ConfigDict, dataset: str = "moving_mnist") -> None:
  """A tiny prior over the runlocal VQ-VAE's 2x4x4 codes."""
  _tiny_data(config, dataset)
  config.model.update(dict(hidden_dim=24, heads=2, layers=2, attn_type="full", dropout=0.0, attn_dropout=0.0))
  config.batch_size = 4
  config.lr = 3e-3
  config.total_steps = 30
  config.log_every = 5
  config.eval_every = 30
  config.eval_batches = 1
  config.checkpoint_every = 10
  config.eval_options.samples = ml_collections.ConfigDict(dict(every=30, num_samples=2))
