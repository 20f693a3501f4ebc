"""cuDNN fused (flash) attention (GPU) as the `"cudnn"` kernel of the "full" attention pattern.

Importing this module registers, for attn_type "full" (causal as the prior uses it, or bidirectional):
  - `"cudnn"`: `jax.nn.dot_product_attention(..., implementation="cudnn")` where cuDNN's constraints hold on every
    GPU it supports (head dim <= 128);
  - `"cudnn_sm90"`: the same with Hopper's (sm90) and later GPUs' limit, head dim <= 256 (BAIR's prior has 144).
The limits are those of `jax/_src/cudnn/fused_attention_stablehlo.py::check_is_flash_attention` (jax 0.10.2:
bf16/fp16 inputs, head dim a multiple of 8 and at most 256 on compute capability >= 9.0, 128 before). JAX picks the
limit from the process's GPU; here the chip is the config's explicit choice of name, never read at trace time.

Where a constraint fails (say float32 inputs, or dropout, which `jax.nn.dot_product_attention` does not offer) the
call falls back to the pattern's XLA path, and the choice is logged once per configuration naming the constraint.
`cudnn_unsupported` is that check, a pure function of shapes and dtypes.

Contract: that of `Pattern.attend`, `(B, L, N, Dh)` in and out (the layout cuDNN takes), scores scaled by
`1/sqrt(Dh)`, float32 softmax inside cuDNN; `precision` is ignored (cuDNN's bf16/fp16 matmuls accumulate in
float32). Not run in this repository's tests, which have no GPU: they check the selection and the fallback.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from videogpt_jax.models import attention_patterns

MAX_HEAD_DIM = {"cudnn": 128, "cudnn_sm90": 256}
HEAD_DIM_MULTIPLE = 8
DTYPES = (jnp.bfloat16, jnp.float16)

_logged: set[tuple] = set()


def cudnn_unsupported(dtypes, head_dim: int, *, dropout: bool, max_head_dim: int = MAX_HEAD_DIM["cudnn"]) -> str:
  """Why cuDNN flash attention cannot run a call: "" if it can, else the first failed constraint in words.

  Args:
    dtypes: the dtypes of q, k and v.
    head_dim: Dh.
    dropout: whether the call asks for attention dropout (rate > 0, not deterministic).
    max_head_dim: cuDNN's head-dim limit for the GPU chosen (`MAX_HEAD_DIM`).
  """
  dtypes = [np.dtype(d) for d in dtypes]
  if len(set(dtypes)) != 1 or dtypes[0] not in [np.dtype(d) for d in DTYPES]:
    return f"cuDNN needs bfloat16 or float16 q, k, v of one dtype, got {', '.join(map(str, dtypes))}"
  if head_dim % HEAD_DIM_MULTIPLE or head_dim > max_head_dim:
    return f"cuDNN needs a head dim that is a multiple of {HEAD_DIM_MULTIPLE} and <= {max_head_dim}, got {head_dim}"
  if dropout:
    return "cuDNN attention (jax.nn.dot_product_attention) has no attention dropout"
  return ""


def _log_once(key: tuple, message: str, *args) -> None:
  if key not in _logged:
    _logged.add(key)
    logging.info(message, *args)


def cudnn_attend(pattern, q, k, v, *, dropout_rate, dropout_rng, deterministic, precision, name="cudnn"):
  """`Pattern.attend` by cuDNN, or by the pattern's XLA path where cuDNN's constraints fail (logged once)."""
  dropout = dropout_rate > 0 and not deterministic
  why_not = cudnn_unsupported((q.dtype, k.dtype, v.dtype), q.shape[-1], dropout=dropout,
                              max_head_dim=MAX_HEAD_DIM[name])
  key = (name, pattern, q.shape, str(q.dtype), why_not)
  if why_not:
    _log_once(key, "attn_kernel=%r: %s; using the XLA attention for shape %s, q %s %s.", name, why_not,
              pattern.shape, q.dtype, q.shape)
    xla = dataclasses.replace(pattern, kernel="xla")
    return xla.attend(q, k, v, dropout_rate=dropout_rate, dropout_rng=dropout_rng, deterministic=deterministic,
                      precision=precision)
  _log_once(key, "attn_kernel=%r: cuDNN fused attention for shape %s, q %s %s.", name, pattern.shape, q.dtype,
            q.shape)
  out = jax.nn.dot_product_attention(q, k, v, scale=1.0 / math.sqrt(q.shape[-1]), is_causal=pattern.causal,
                                     implementation="cudnn")
  return out.astype(q.dtype)


for _name in MAX_HEAD_DIM:
  attention_patterns.register_kernel("full", _name, functools.partial(cudnn_attend, name=_name))
