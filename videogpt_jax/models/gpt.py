"""The VideoGPT prior: a GPT over the VQ-VAE's latent grid `(t, h, w)`, optionally frame- or class-conditional.

Tokens enter as their frozen codebook vectors (variables["codebook"]["embeddings"], `(K, D)`), go through `fc_in`
(no bias), are right-shifted in raster order behind a learned start vector, get a broadcast spatio-temporal
position embedding, then pre-LN blocks (causal self-attention; cross-attention to the encoded conditioning frames;
GeLU2 MLP), a final LayerNorm and `fc_out` (no bias) to K logits. Every piece matches the original numerically;
the KV-cache decoding used by `videogpt_jax.models.sampling` is `GPT.decode_step`.

Variables: `params` (trainable) and `codebook` (non-trainable, the VQ-VAE's embeddings; `init` fills it with random
vectors, to be replaced by the trained VQ-VAE's `codebook/embeddings`). Call:
`module.apply(variables, codes, cond, deterministic=True, rngs={"dropout": key})` with `cond` the conditioning
mapping of `conditioning.make_cond(frames=..., label=...)` (None or `{}` when unconditional); the keyword form
`apply(variables, codes, cond_frames=..., labels=...)` builds the same mapping.
With `mutable=["intermediates"]` the forward also returns the original's intermediate tensors.

With `scan_layers=True` the blocks run under `nn.scan` (one traced and compiled layer, the parameters stacked on
a leading "layers" axis under `params/blocks`); `stack_layers` / `unstack_layers` convert variables between the
two layouts, and decoding runs the loop form (`GPT.as_loop`).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from videogpt_jax import sharding
from videogpt_jax.models import attention_patterns, conditioning, mha, platforms
# Imported for their `register_kernel` calls: attn_kernel "splash"/"splash_interpret" (TPU), "cudnn" (GPU).
from videogpt_jax.models import cudnn_attention, splash_attention  # noqa: F401
from videogpt_jax.models.conditioning import FrameEncoder
from videogpt_jax.models.initializers import torch_uniform
from videogpt_jax.models.norms import LayerNorm

COND_DIM = 240  # width of the frame encoder's output, hard-coded in the original
ACTIVATION_AXES = ("batch", "length", "act_embed")  # logical axes of the residual stream (B, L, C)
FRAME_STRIDE = (1, 4, 4)


def gelu2(x: jax.Array) -> jax.Array:
  """The original's GeLU approximation `x * sigmoid(1.702 x)`."""
  return x * jax.nn.sigmoid(1.702 * x)


class PosEmbed(nn.Module):
  """Broadcast position embedding: one table per axis, `(shape[i], C / n_axes)`, concatenated along channels.

  Attributes:
    shape: grid shape, e.g. `(t, h, w)`.
    features: C (must divide by `len(shape)`).
  """
  shape: tuple[int, ...]
  features: int

  def setup(self):
    n = len(self.shape)
    if self.features % n:
      raise ValueError(f"position embedding: width {self.features} must divide by the number of axes {n}")
    init = nn.with_logical_partitioning(nn.initializers.normal(0.01), (None, "embed"))
    self.tables = [self.param(f"d_{i}", init, (s, self.features // n)) for i, s in enumerate(self.shape)]

  def __call__(self) -> jax.Array:
    """The full table `(*shape, C)`."""
    parts = []
    for i, table in enumerate(self.tables):
      view = (1,) * i + (self.shape[i],) + (1,) * (len(self.shape) - i - 1) + (-1,)
      parts.append(jnp.broadcast_to(table.reshape(view), (*self.shape, table.shape[-1])))
    return jnp.concatenate(parts, axis=-1)

  def at(self, pos: jax.Array) -> jax.Array:
    """The embedding `(C,)` of raster position `pos` (traced int), without building the full table."""
    coords = jnp.unravel_index(pos, self.shape)
    return jnp.concatenate([table[c] for table, c in zip(self.tables, coords)], axis=-1)


class AttentionBlock(nn.Module):
  """Pre-LN transformer block of the prior (names follow the original's `AttentionBlock`).

  `x += drop(attn(LN x))`; with frame conditioning `x += drop(enc_attn(LN x, frames))`; `x += drop(mlp(LN x))`.
  """
  pattern: attention_patterns.Pattern
  hidden_dim: int
  heads: int
  n_layer: int
  dropout: float = 0.0
  attn_dropout: float = 0.0
  class_cond_dim: int | None = None
  frame_cond: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    c = self.hidden_dim
    self.pre_attn_norm = LayerNorm(self.class_cond_dim, dtype=self.dtype)
    self.attn = mha.SelfAttention(c, self.heads, self.n_layer, self.pattern, self.attn_dropout, dtype=self.dtype)
    if self.frame_cond:
      self.pre_enc_norm = LayerNorm(self.class_cond_dim, dtype=self.dtype)
      self.enc_attn = mha.CrossAttention(c, COND_DIM, self.heads, self.n_layer, dtype=self.dtype,
                                         kernel=self.pattern.kernel)
    self.pre_fc_norm = LayerNorm(self.class_cond_dim, dtype=self.dtype)
    # PyTorch's default Linear init, as the original's MLP keeps it.
    self.fc1 = mha.dense(4 * c, ("embed", "mlp"), torch_uniform(c), use_bias=True, bias_init=torch_uniform(c),
                         dtype=self.dtype)
    self.fc2 = mha.dense(c, ("mlp", "embed"), torch_uniform(4 * c), use_bias=True, bias_init=torch_uniform(4 * c),
                         dtype=self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def cross_kv(self, frame_embd: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values of the cross-attention for `frame_embd (B, Lc, 240)`; computed once per input."""
    return self.enc_attn.kv(frame_embd)

  def _cross_and_mlp(self, x, onehot, kv, deterministic, single_token=False):
    if self.frame_cond:
      h = self.enc_attn(self.pre_enc_norm(x, onehot), kv, single_token=single_token)
      x = x + self.drop(h, deterministic=deterministic)
    h = self.fc2(gelu2(self.fc1(self.pre_fc_norm(x, onehot))))
    return x + self.drop(h, deterministic=deterministic)

  def __call__(self, x: jax.Array, onehot: jax.Array | None, frame_embd: jax.Array | None,
               deterministic: bool = True) -> jax.Array:
    """x `(B, L, C)`, onehot `(B, classes)` or None, frame_embd `(B, Lc, 240)` or None -> `(B, L, C)`."""
    x = x + self.drop(self.attn(self.pre_attn_norm(x, onehot), deterministic), deterministic=deterministic)
    kv = self.cross_kv(frame_embd) if self.frame_cond else None
    # The block boundary's layout, said once: examples split over the batch axes, tokens and channels whole on
    # every device (on a mesh; a no-op without one), so no block inherits an odd layout from its neighbour.
    return sharding.constrain(self._cross_and_mlp(x, onehot, kv, deterministic), ACTIVATION_AXES, "block output")

  def decode(self, x: jax.Array, onehot: jax.Array | None, kv: tuple[jax.Array, jax.Array] | None,
             cache: dict[str, jax.Array], pos: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token `(B, 1, C)` at raster position `pos` with this layer's KV cache (see `SelfAttention.decode`)."""
    h, cache = self.attn.decode(self.pre_attn_norm(x, onehot), cache, pos)
    return self._cross_and_mlp(x + h, onehot, kv, True, single_token=True), cache


class ScanBlock(AttentionBlock):
  """`AttentionBlock` as an `nn.scan` body: carry `x`, the conditioning and `deterministic` broadcast."""

  def __call__(self, x, onehot, frame_embd, deterministic=True):  # pylint: disable=arguments-renamed
    return super().__call__(x, onehot, frame_embd, deterministic), None


# `remat_policy` names -> what a rematerialised block keeps from its forward pass (None: nothing but its input).
REMAT_POLICIES = {
    "full": None,
    "save_dots": jax.checkpoint_policies.dots_saveable,
    "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class GPT(nn.Module):
  """VideoGPT prior over codes `(B, t, h, w)`.

  Attributes:
    shape: latent grid `(t, h, w)`.
    n_codes: codebook size K (the number of logits).
    embedding_dim: codebook vector width D.
    hidden_dim: transformer width C (divisible by 3 and by `heads`).
    heads: attention heads.
    layers: number of blocks.
    attn_type: "full", "axial" or "sparse" (same weights; only the attention pattern differs, see
      `attention_pattern`).
    n_cond_frames: number of conditioning frames (0: no frame conditioning).
    frame_shape: `(H, W)` of the conditioning frames (required when `n_cond_frames > 0`).
    class_cond_dim: number of classes for class-conditional LayerNorms, or None.
    dropout: residual dropout rate.
    attn_dropout: attention-probability dropout rate, for every `attn_type` (the original's sparse kernel
      ignores it: a sparse prior reproducing the original uses 0, as its importer sets).
    dtype: compute dtype (parameters stay float32; norms and softmax compute in float32).
    remat: rematerialise each block in the backward pass (saves activation memory).
    remat_policy: what a rematerialised block keeps (`REMAT_POLICIES`): "full" (nothing; recompute the block),
      "save_dots" (every matmul output), "save_dots_no_batch" (matmuls without batch dimensions: the weights').
    scan_layers: run the blocks under `nn.scan` over a stacked "layers" axis (one layer traced and compiled,
      what large configs compile with); the loop form (False) is the original's parameter layout.
    cond_width: stem width of the frame encoder (the original's ResNet-34: 64).
    cond_blocks: residual blocks per group of the frame encoder (ResNet-34: (3, 4, 6, 3)); a smaller encoder is a
      cheap variant for small experiments, the defaults are what the released checkpoints use.
    platform: the chip the program is for (`platforms.PLATFORMS`): picks the frame encoder's convolution
      formulations and the sampler's default group size, whatever host traces the program.
    sparse_block: tokens per block of the "sparse" pattern (the original's 32).
    sparse_local_blocks: earlier blocks each block attends in the "sparse" pattern (the original's 4).
    attn_kernel: implementation of the attention (`attention_patterns.kernels(attn_type)`): "xla" everywhere (the
      default: parity with the original); "splash" (TPU Pallas, "full"/"sparse", no attention dropout, see
      `splash_attention`); "cudnn"/"cudnn_sm90" (GPU, "full", XLA fallback where cuDNN cannot run, see
      `cudnn_attention`).
  """
  shape: tuple[int, int, int]
  n_codes: int
  embedding_dim: int
  hidden_dim: int = 576
  heads: int = 4
  layers: int = 8
  attn_type: str = "full"
  n_cond_frames: int = 0
  frame_shape: tuple[int, int] | None = None
  class_cond_dim: int | None = None
  dropout: float = 0.2
  attn_dropout: float = 0.3
  dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str = "full"
  scan_layers: bool = False
  cond_width: int = 64
  cond_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
  platform: str = "cpu"
  sparse_block: int = 32
  sparse_local_blocks: int = 4
  attn_kernel: str = "xla"

  @property
  def attention_pattern(self) -> attention_patterns.Pattern:
    """The causal self-attention pattern of every block over the latent grid."""
    return attention_patterns.make(self.attn_type, tuple(self.shape), causal=True, block=self.sparse_block,
                                   local_blocks=self.sparse_local_blocks, kernel=self.attn_kernel)

  @property
  def seq_len(self) -> int:
    return int(np.prod(self.shape))

  @property
  def head_dim(self) -> int:
    return self.hidden_dim // self.heads

  @property
  def frame_cond_shape(self) -> tuple[int, int, int] | None:
    """Grid of the encoded conditioning frames `(n_cond_frames, H/4, W/4)`, or None."""
    if not self.n_cond_frames:
      return None
    return (self.n_cond_frames // FRAME_STRIDE[0], self.frame_shape[0] // FRAME_STRIDE[1],
            self.frame_shape[1] // FRAME_STRIDE[2])

  def _check_config(self):
    platforms.check(self.platform, "GPT platform")
    if len(self.shape) != 3 or min(self.shape) < 1:
      raise ValueError(f"GPT shape must be a latent grid (t, h, w) of positive sizes, got {self.shape}")
    if self.hidden_dim % 3 or self.hidden_dim % self.heads:
      raise ValueError(f"GPT hidden_dim={self.hidden_dim} must divide by 3 (position embedding) and by "
                       f"heads={self.heads}")
    if self.n_cond_frames < 0:
      raise ValueError(f"GPT n_cond_frames must be >= 0, got {self.n_cond_frames}")
    if self.n_cond_frames:
      if self.frame_shape is None or len(self.frame_shape) != 2:
        raise ValueError("GPT frame_shape=(H, W) is required when n_cond_frames > 0")
      if any(s % f for s, f in zip(self.frame_shape, FRAME_STRIDE[1:])) or COND_DIM % self.heads:
        raise ValueError(f"GPT frame_shape {self.frame_shape} must divide by 4, and {COND_DIM} by heads")
    if self.class_cond_dim is not None and self.class_cond_dim < 1:
      raise ValueError(f"GPT class_cond_dim must be None or >= 1, got {self.class_cond_dim}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"GPT remat_policy must be one of {sorted(REMAT_POLICIES)}, got {self.remat_policy!r}")

  def setup(self):
    self._check_config()
    k, d, c = self.n_codes, self.embedding_dim, self.hidden_dim
    if not self.is_initializing() and not self.has_variable("codebook", "embeddings"):
      raise ValueError("GPT variables need the frozen VQ-VAE codebook as variables['codebook']['embeddings'] "
                       f"of shape (n_codes, embedding_dim) = ({k}, {d})")
    self.codebook = self.variable("codebook", "embeddings",
                                  lambda: jax.random.normal(self.make_rng("params"), (k, d), jnp.float32))
    self.fc_in = mha.dense(c, ("codebook", "embed"), nn.initializers.normal(0.02), dtype=self.dtype)
    self.sos = self.param("sos", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)), (c,))
    self.pos_embd = PosEmbed(tuple(self.shape), c)
    block = ScanBlock if self.scan_layers else AttentionBlock
    if self.remat:
      block = nn.remat(block, static_argnums=(4,), policy=REMAT_POLICIES[self.remat_policy])
    args = (self.attention_pattern, c, self.heads, self.layers, self.dropout, self.attn_dropout,
            self.class_cond_dim, bool(self.n_cond_frames), self.dtype)
    if self.scan_layers:
      self.blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=self.layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})(*args)
    else:
      self.blocks = [block(*args) for _ in range(self.layers)]
    self.norm = LayerNorm(self.class_cond_dim, dtype=jnp.float32)
    self.fc_out = mha.dense(k, ("embed", "vocab"), nn.initializers.zeros, dtype=self.dtype)
    if self.n_cond_frames:
      self.resnet = FrameEncoder(COND_DIM, FRAME_STRIDE, blocks=tuple(self.cond_blocks), width=self.cond_width,
                                 dtype=self.dtype, platform=self.platform)
      self.cond_pos_embd = PosEmbed(self.frame_cond_shape, COND_DIM)

  # Conditioning -------------------------------------------------------------------------------------------------
  def _onehot(self, labels: jax.Array | None, batch: int) -> jax.Array | None:
    if self.class_cond_dim is None:
      if labels is not None:
        raise ValueError("labels were given to a GPT without class conditioning (class_cond_dim=None)")
      return None
    if labels is None or labels.shape != (batch,):
      raise ValueError(f"this GPT is class-conditional: cond['label'] (labels) must be ({batch},) int, got "
                       f"{None if labels is None else labels.shape}")
    return jax.nn.one_hot(labels, self.class_cond_dim, dtype=jnp.float32)

  def encode_frames(self, cond_frames: jax.Array | None, batch: int) -> jax.Array | None:
    """cond_frames `(B, n_cond_frames, H, W, 3)` -> position-embedded features `(B, Lc, 240)`, or None."""
    if not self.n_cond_frames:
      if cond_frames is not None:
        raise ValueError("cond_frames (cond['frames']) were given to a GPT without frame conditioning "
                         "(n_cond_frames=0)")
      return None
    want = (batch, self.n_cond_frames, *self.frame_shape, 3)
    if cond_frames is None or tuple(cond_frames.shape) != want:
      raise ValueError(f"this GPT is frame-conditional: cond_frames (cond['frames']) must be {want}, got "
                       f"{None if cond_frames is None else tuple(cond_frames.shape)}")
    feats = self.resnet(cond_frames)
    self.sow("intermediates", "frame_cond_resnet_out", feats)
    feats = feats.astype(jnp.float32) + self.cond_pos_embd()
    self.sow("intermediates", "frame_cond_embd", feats)
    return feats.reshape(batch, -1, COND_DIM).astype(self.dtype)

  def _condition(self, cond: Mapping[str, jax.Array], batch: int) -> tuple[jax.Array | None, jax.Array | None]:
    """One-hot labels `(B, classes)` and encoded frames `(B, Lc, 240)` (None where unused) of `cond`."""
    return self._onehot(cond.get("label"), batch), self.encode_frames(cond.get("frames"), batch)

  @nn.nowrap
  def cond_from_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    """This prior's conditioning mapping from a data batch (`conditioning.from_batch`)."""
    return conditioning.from_batch(batch, self.n_cond_frames, self.class_cond_dim is not None)

  def _check_codes(self, codes: jax.Array) -> None:
    if codes.ndim != 4 or tuple(codes.shape[1:]) != tuple(self.shape):
      raise ValueError(f"codes must be (B, {', '.join(map(str, self.shape))}), got shape {tuple(codes.shape)}")

  # Full forward -------------------------------------------------------------------------------------------------
  def __call__(self, codes: jax.Array, cond: Mapping[str, jax.Array] | None = None, deterministic: bool = True,
               *, cond_frames: jax.Array | None = None, labels: jax.Array | None = None) -> jax.Array:
    """codes `(B, t, h, w)` int -> logits `(B, t, h, w, K)` float32; logits at p predict codes[p].

    Args:
      codes: the code grid.
      cond: the conditioning mapping (`conditioning.make_cond`; None or `{}` for an unconditional prior).
      deterministic: no dropout (else apply with `rngs={"dropout": key}`).
      cond_frames, labels: the keyword form of `cond` (the original's API), built into it by `make_cond`.
    """
    self._check_codes(codes)
    b = codes.shape[0]
    onehot, frame_embd = self._condition(conditioning.as_cond(cond, cond_frames, labels), b)
    x = self.fc_in(jnp.take(self.codebook.value, codes, axis=0))  # (B, t, h, w, C)
    self.sow("intermediates", "fc_in_out", x)
    x = x.reshape(b, self.seq_len, self.hidden_dim)
    # Right shift in raster order: position p sees the token of p-1; position 0 the learned start vector.
    sos = jnp.broadcast_to(self.sos.astype(x.dtype), (b, 1, self.hidden_dim))
    x = jnp.concatenate([sos, x[:, :-1]], axis=1)
    x = x + self.pos_embd().reshape(1, self.seq_len, self.hidden_dim).astype(x.dtype)
    self.sow("intermediates", "attn_stack_input", self._grid(x))
    if self.scan_layers:
      x, _ = self.blocks(x, onehot, frame_embd, deterministic)
    else:
      for i, block in enumerate(self.blocks):
        x = block(x, onehot, frame_embd, deterministic)
        self.sow("intermediates", f"block{i}_out", self._grid(x))
    self.sow("intermediates", "attn_stack_out", self._grid(x))
    x = self.norm(x, onehot)
    self.sow("intermediates", "final_norm_out", self._grid(x))
    return self._grid(self.fc_out(x.astype(self.dtype)).astype(jnp.float32))

  def _grid(self, x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], *self.shape, x.shape[-1])

  # KV-cache decoding --------------------------------------------------------------------------------------------
  def prepare_decode(self, cond: Mapping[str, jax.Array] | None, batch: int) -> dict[str, Any]:
    """Everything decoding needs from the conditioning mapping `cond`, computed once: one-hot labels and
    per-layer cross-attention keys/values."""
    self._check_loop("prepare_decode")
    onehot, frame_embd = self._condition(conditioning.as_cond(cond), batch)
    kv = [blk.cross_kv(frame_embd) for blk in self.blocks] if frame_embd is not None else None
    return {"onehot": onehot, "cross_kv": kv}

  def _check_loop(self, what: str) -> None:
    if self.scan_layers:
      raise ValueError(f"GPT.{what} runs the loop form: use gpt.as_loop() with unstack_layers(variables)")

  @nn.nowrap
  def as_loop(self) -> "GPT":
    """This prior with `scan_layers=False` (the layout of `unstack_layers(variables)`)."""
    return self.clone(scan_layers=False, parent=None) if self.scan_layers else self

  @nn.nowrap
  def init_cache(self, batch: int) -> list[dict[str, jax.Array]]:
    """Zero KV caches per layer: keys `(B, heads, d, L)`, values `(B, heads, L, d)` (see `SelfAttention.decode`)."""
    b, h, length, d = batch, self.heads, self.seq_len, self.head_dim
    # Distinct buffers, so that a caller may donate the cache to a jitted step.
    return [{"k": jnp.zeros((b, h, d, length), self.dtype), "v": jnp.zeros((b, h, length, d), self.dtype)}
            for _ in range(self.layers)]

  def decode_step(self, prev_codes: jax.Array, pos: jax.Array, cache: list[dict[str, jax.Array]],
                  prepared: dict[str, Any]) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
    """Logits at raster position `pos` given the token at `pos - 1`.

    Args:
      prev_codes: `(B,)` int, the code at `pos - 1` (ignored at `pos == 0`, where the start vector is used).
      pos: scalar int (may be traced).
      cache: from `init_cache`, holding keys/values of positions `< pos`.
      prepared: from `prepare_decode`.

    Returns:
      logits `(B, K)` float32 and the updated cache.
    """
    self._check_loop("decode_step")
    b = prev_codes.shape[0]
    x = self.fc_in(jnp.take(self.codebook.value, prev_codes, axis=0))  # (B, C)
    x = jnp.where(pos == 0, self.sos.astype(x.dtype)[None], x)
    x = (x + self.pos_embd.at(pos).astype(x.dtype))[:, None]  # (B, 1, C)
    onehot = prepared["onehot"]
    new_cache = []
    for i, block in enumerate(self.blocks):
      kv = prepared["cross_kv"][i] if prepared["cross_kv"] is not None else None
      x, layer_cache = block.decode(x, onehot, kv, cache[i], pos)
      new_cache.append(layer_cache)
    x = self.norm(x, onehot)
    return self.fc_out(x.astype(self.dtype))[:, 0].astype(jnp.float32).reshape(b, self.n_codes), new_cache



# ---------------------------------------------------------------------------------------------------------------
# Builder.
# ---------------------------------------------------------------------------------------------------------------
def stack_layers(variables: Mapping[str, Any], layers: int) -> dict[str, Any]:
  """Loop-form variables (`params/blocks_0` ... `blocks_{layers-1}`) -> the `scan_layers=True` layout (`params/
  blocks`, each leaf stacked on a new leading axis). Other collections are unchanged."""
  params = dict(variables["params"])
  blocks = [params.pop(f"blocks_{i}") for i in range(layers)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  return {**variables, "params": {**params, "blocks": stacked}}


def unstack_layers(variables: Mapping[str, Any], layers: int) -> dict[str, Any]:
  """The inverse of `stack_layers` (the loop form, what decoding and the original's layout use)."""
  params = dict(variables["params"])
  if "blocks" not in params:
    return dict(variables)  # already the loop form
  stacked = params.pop("blocks")
  for i in range(layers):
    params[f"blocks_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return {**variables, "params": params}


def gpt_from_config(config) -> GPT:
  """The prior of `config.model` plus what its VQ-VAE fixes (`config.derived`: latent grid, codebook size and
  width, frame shape, number of classes; written by the trainer), `config.compute_dtype` and `config.platform`
  ("" or absent: the platform of this process's devices)."""
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config.model).items()}
  class_cond = kwargs.pop("class_cond", False)
  d = config.derived
  return GPT(shape=tuple(d.shape), n_codes=int(d.n_codes), embedding_dim=int(d.embedding_dim),
             frame_shape=tuple(d.frame_shape) if kwargs.get("n_cond_frames") else None,
             class_cond_dim=int(d.class_cond_dim) if class_cond else None,
             dtype=jnp.dtype(config.get("compute_dtype", "float32")),
             platform=config.get("platform") or platforms.of_devices(jax.devices()), **kwargs)
