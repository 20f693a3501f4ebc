"""The VideoGPT VQ-VAE: 3D-conv encoder with axial-attention residual blocks, EMA codebook, mirrored decoder.

Video `(B, T, H, W, 3)` float32 in [-0.5, 0.5] -> latents `(B, t, h, w, D)` with `(t, h, w) = (T, H, W) / downsample`
-> codes `(B, t, h, w)` int32 -> reconstruction `(B, T, H, W, 3)` (not clipped).

Variable collections: `params`, `batch_stats` (BatchNorm running statistics), `codebook` (see `quantizer.py`).
Training-mode calls: `apply(..., video, train=True, mutable=["batch_stats", "codebook"], rngs={"codebook": key})`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from videogpt_jax.models.axial_attention import AxialBlock, check_kernel
from videogpt_jax.models.conv import BatchNorm, SamePadConv3D, SamePadConvTranspose3D
from videogpt_jax.models import platforms, quantizer

# The original divides the reconstruction MSE by this constant (roughly the data variance).
RECON_LOSS_SCALE = 0.06


def _halvings(downsample: Sequence[int]) -> tuple[int, int, int]:
  """log2 of each entry of `downsample` (validated: three positive powers of two)."""
  ds = tuple(int(d) for d in downsample)
  if len(ds) != 3 or any(d < 1 or d & (d - 1) for d in ds):
    raise ValueError(f"downsample must be 3 positive powers of 2 (T, H, W), got {tuple(downsample)}")
  return tuple(int(math.log2(d)) for d in ds)  # type: ignore[return-value]


def stride_schedule(downsample: Sequence[int]) -> list[tuple[int, int, int]]:
  """Strides of the k=4 (transposed) convs: 2 on every axis that still needs halving, else 1.

  E.g. (4, 2, 2) -> [(2, 2, 2), (2, 1, 1)].
  """
  left = list(_halvings(downsample))
  schedule = []
  for _ in range(max(left)):
    schedule.append(tuple(2 if n > 0 else 1 for n in left))
    left = [n - 1 for n in left]
  return schedule  # type: ignore[return-value]


class AttentionResidualBlock(nn.Module):
  """`x + f(x)`, `f = BN, ReLU, conv3 C->C/2, BN, ReLU, conv1 C/2->C, BN, ReLU, AxialBlock` (convs without bias).

  Attributes:
    n_hiddens: C (even).
    attention: end `f` with the AxialBlock (the paper's Moving MNIST model has none).
    conv_impl: `conv_ops` formulation.
    platform: target chip (resolves `conv_impl="auto"`).
    attn_kernel: the AxialBlock's implementation (`axial_attention.KERNELS`).
  """
  n_hiddens: int
  attention: bool = True
  conv_impl: str = "auto"
  platform: str = "cpu"
  attn_kernel: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = nn.relu(BatchNorm(name="norm_0")(x, train))
    conv = dict(use_bias=False, impl=self.conv_impl, platform=self.platform)
    h = SamePadConv3D(self.n_hiddens // 2, 3, name="conv_0", **conv)(h)
    h = nn.relu(BatchNorm(name="norm_1")(h, train))
    h = SamePadConv3D(self.n_hiddens, 1, name="conv_1", **conv)(h)
    h = nn.relu(BatchNorm(name="norm_2")(h, train))
    if self.attention:
      h = AxialBlock(n_heads=2, kernel=self.attn_kernel, platform=self.platform, name="attn")(h)
    return x + h


def _res_block(remat: bool):
  # `train` (argument 2, counting the module) is a Python bool that selects code paths: keep it static.
  return nn.remat(AttentionResidualBlock, static_argnums=(2,)) if remat else AttentionResidualBlock


class Encoder(nn.Module):
  """k=4 strided convs (ReLU after each), conv_last k=3, residual blocks, BN + ReLU. `(B,T,H,W,3)` -> `(B,t,h,w,C)`."""
  n_hiddens: int
  n_res_layers: int
  downsample: Sequence[int]
  attention: bool = True
  conv_impl: str = "auto"
  platform: str = "cpu"
  remat: bool = False
  attn_kernel: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i, strides in enumerate(stride_schedule(self.downsample)):
      x = SamePadConv3D(self.n_hiddens, 4, strides, impl=self.conv_impl, platform=self.platform,
                        name=f"convs_{i}")(x)
      x = nn.relu(x)
    x = SamePadConv3D(self.n_hiddens, 3, impl=self.conv_impl, platform=self.platform, name="conv_last")(x)
    block = _res_block(self.remat)
    for i in range(self.n_res_layers):
      x = block(self.n_hiddens, self.attention, self.conv_impl, self.platform, self.attn_kernel,
                name=f"res_{i}")(x, train)
    return nn.relu(BatchNorm(name="norm")(x, train))


class Decoder(nn.Module):
  """Residual blocks, BN + ReLU, k=4 transposed convs (ReLU between them). `(B,t,h,w,C)` -> `(B,T,H,W,3)`."""
  n_hiddens: int
  n_res_layers: int
  downsample: Sequence[int]
  attention: bool = True
  conv_impl: str = "auto"
  platform: str = "cpu"
  remat: bool = False
  attn_kernel: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    block = _res_block(self.remat)
    for i in range(self.n_res_layers):
      x = block(self.n_hiddens, self.attention, self.conv_impl, self.platform, self.attn_kernel,
                name=f"res_{i}")(x, train)
    x = nn.relu(BatchNorm(name="norm")(x, train))
    schedule = stride_schedule(self.downsample)
    for i, strides in enumerate(schedule):
      last = i == len(schedule) - 1
      x = SamePadConvTranspose3D(3 if last else self.n_hiddens, 4, strides, impl=self.conv_impl,
                                 platform=self.platform, name=f"convts_{i}")(x)
      if not last:
        x = nn.relu(x)
    return x


class VQVAE(nn.Module):
  """VideoGPT's VQ-VAE.

  Attributes:
    embedding_dim: D, codebook vector size.
    n_codes: K, codebook size.
    n_hiddens: channels of the conv stack (even).
    n_res_layers: attention residual blocks in the encoder and in the decoder.
    downsample: `(dt, dh, dw)` powers of two (at least one > 1).
    conv_impl: `conv_ops` formulation of every convolution.
    attention: use the axial attention in the residual blocks (True in the original code).
    remat: rematerialise each residual block in the backward pass (saves activation memory).
    platform: the chip the program is for (`platforms.PLATFORMS`); with `conv_impl="auto"` it picks the
      formulations (CPU reformulations on "cpu", one XLA convolution elsewhere), whatever host traces the program.
    attn_kernel: the axial attention's implementation, same parameters (`axial_attention.AxisAttention`): "xla"
      (the default: parity with the original), "pallas" (one fused Pallas kernel per axis on TPU, the XLA path
      elsewhere; the `tpu` config argument's choice), "pallas_interpret" (tests).
  """
  embedding_dim: int
  n_codes: int
  n_hiddens: int = 240
  n_res_layers: int = 4
  downsample: Sequence[int] = (4, 4, 4)
  conv_impl: str = "auto"
  attention: bool = True
  remat: bool = False
  platform: str = "cpu"
  attn_kernel: str = "xla"

  def setup(self):
    platforms.check(self.platform, "VQVAE platform")
    check_kernel(self.attn_kernel)
    if max(_halvings(self.downsample)) < 1:
      raise ValueError(f"downsample must reduce at least one axis, got {tuple(self.downsample)}")
    if self.n_hiddens < 2 or self.n_hiddens % 2:
      raise ValueError(f"n_hiddens must be a positive even number, got {self.n_hiddens}")
    for name in ("embedding_dim", "n_codes"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.n_res_layers < 0:
      raise ValueError(f"n_res_layers must be >= 0, got {self.n_res_layers}")
    stack = dict(n_hiddens=self.n_hiddens, n_res_layers=self.n_res_layers, downsample=tuple(self.downsample),
                 attention=self.attention, conv_impl=self.conv_impl, platform=self.platform, remat=self.remat,
                 attn_kernel=self.attn_kernel)
    self.encoder = Encoder(**stack)
    self.pre_vq_conv = SamePadConv3D(self.embedding_dim, 1, impl=self.conv_impl, platform=self.platform)
    # Declared here rather than in a submodule so the `codebook` collection is flat: {embeddings, N, z_avg, ...}.
    self.codebook = quantizer.declare_state(self, self.n_codes, self.embedding_dim)
    self.post_vq_conv = SamePadConv3D(self.n_hiddens, 1, impl=self.conv_impl, platform=self.platform)
    self.decoder = Decoder(**stack)

  def latent_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """`(t, h, w)` of the codes for a video of shape `(T, H, W)`, `(T, H, W, 3)` or `(B, T, H, W, 3)`.

    Needs no variables: `VQVAE(...).latent_shape((16, 64, 64))` works on an unbound module.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (3, 4, 5):
      raise ValueError(f"input_shape must be (T, H, W), (T, H, W, C) or (B, T, H, W, C), got {shape}")
    thw = shape[:3] if len(shape) == 3 else shape[-4:-1]
    ds = tuple(2 ** n for n in _halvings(self.downsample))
    if any(s % d for s, d in zip(thw, ds)):
      raise ValueError(f"video (T, H, W)={thw} is not divisible by downsample={ds}")
    return tuple(s // d for s, d in zip(thw, ds))  # type: ignore[return-value]

  def _check_video(self, video: jax.Array) -> None:
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"video must be (B, T, H, W, 3), got shape {video.shape}")
    self.latent_shape(video.shape)

  def encode(self, video: jax.Array, train: bool = False) -> jax.Array:
    """Pre-quantisation latents `z (B, t, h, w, D)`."""
    self._check_video(video)
    return self.pre_vq_conv(self.encoder(video, train))

  def decode(self, z_q: jax.Array, train: bool = False) -> jax.Array:
    """Latents `(B, t, h, w, D)` -> video `(B, T, H, W, 3)` (not clipped)."""
    return self.decoder(self.post_vq_conv(z_q), train)

  def __call__(self, video: jax.Array, train: bool = False,
               draws: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Reconstructs `video (B, T, H, W, 3)`.

    Args:
      video: float in [-0.5, 0.5].
      train: BatchNorm batch statistics and codebook EMA/restarts (apply with
        `mutable=["batch_stats", "codebook"]`, `rngs={"codebook": key}`).
      draws: optional replay of the codebook's random draws (`quantizer.DRAW_KEYS`), for parity tests.
    Returns:
      `(recon, aux)`; aux: `recon_loss` (MSE / 0.06), `commitment_loss`, `loss` (their sum), `perplexity`,
      `codes (B, t, h, w)` int32.
    """
    z = self.encode(video, train)
    z_q, aux = quantizer.quantize(self.codebook, z, update=train and not self.is_initializing(),
                                  key_fn=lambda: self.make_rng("codebook"), draws=draws)
    recon = self.decode(z_q, train)
    recon_loss = jnp.mean((recon.astype(jnp.float32) - video.astype(jnp.float32)) ** 2) / RECON_LOSS_SCALE
    aux = dict(aux, recon_loss=recon_loss, loss=recon_loss + aux["commitment_loss"])
    return recon, aux

  def encode_to_indices(self, video: jax.Array) -> jax.Array:
    """Video `(B, T, H, W, 3)` -> codes `(B, t, h, w)` int32 (eval mode)."""
    z = self.encode(video, train=False)
    codes = quantizer.nearest_codes(z.reshape(-1, self.embedding_dim), self.codebook["embeddings"].value)
    return codes.reshape(z.shape[:-1])

  def embed_codes(self, codes: jax.Array) -> jax.Array:
    """Codes `(B, t, h, w)` -> codebook vectors `(B, t, h, w, D)`."""
    return jnp.take(self.codebook["embeddings"].value, codes, axis=0)

  def decode_from_indices(self, codes: jax.Array) -> jax.Array:
    """Codes `(B, t, h, w)` -> video `(B, T, H, W, 3)` (eval mode, not clipped)."""
    if codes.ndim != 4:
      raise ValueError(f"codes must be (B, t, h, w), got shape {codes.shape}")
    return self.decode(self.embed_codes(codes), train=False)


# ---------------------------------------------------------------------------------------------------------------
# Builder.
# ---------------------------------------------------------------------------------------------------------------
def vqvae_from_config(config) -> VQVAE:
  """The VQ-VAE of `config.model` for `config.platform` ("" or absent: the platform of this process's devices).

  `config.model`'s fields are the module's arguments, verbatim (lists, as a checkpoint's JSON config returns them,
  become tuples: the module must stay hashable for jit's cache).
  """
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config.model).items()}
  return VQVAE(**kwargs, platform=config.get("platform") or platforms.of_devices(jax.devices()))
