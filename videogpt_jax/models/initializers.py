"""PyTorch's default initialiser, which the original keeps on most of its layers (so fresh models match it)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def torch_uniform(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default Linear / Conv weight init (kaiming_uniform with
  a=sqrt(5)) and bias init, for a layer with `fan_in` inputs per output (receptive field x input channels)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init
