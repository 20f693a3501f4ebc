"""The VQ-VAE's axial self-attention along one axis as one fused Pallas kernel (TPU), forward and backward.

Why: compiled for TPU, the XLA path of `AxisAttention` moves each activation through HBM about a dozen times per
axis (q, k, v and output projections, their (heads, head_dim) = (2, 120) minor dimensions padded to (8, 128)
tiles, the moved axes, 32-wide score rows padded to 128 lanes, and the same again backward): in the BAIR VQ-VAE's
train step the axial attention is 47 of the 73.5 GB each chip moves (docs/scaling.md). This kernel reads a tile
of tokens once, computes the projections, the attention and the output projection in VMEM, and writes the result
once; its backward recomputes the forward inside the kernel (flash-attention style) and writes dx once, with the
weight gradients accumulated in VMEM across the grid.

Layout: the attended axis is moved next to the channels, so that the rows to attend along are `L` consecutive
tokens of a `(N, C)` token matrix; a grid step takes `tokens` of them (a multiple of 128) and attends within each
128-token chunk with a block-diagonal mask (token i sees token j iff i // L == j // L): every matmul is a whole
MXU tile, at the price of computing 128/L times the score flops a row needs (small next to the projections).
Heads are computed one at a time, their head dim zero-padded to a multiple of 128 lanes (the padding contributes
exact zeros). Math as the XLA path: projections and `p @ v` in the input dtype with float32 accumulation, scores
scaled by `1/sqrt(head_dim)`, float32 softmax, probabilities cast to the input dtype before `p @ v`.

Kernels: `"pallas"` (Mosaic, lowers for TPU also from a CPU host, as the ahead-of-time compile tool does) and
`"pallas_interpret"` (the same kernel run by the Pallas interpreter: the CPU check against `"xla"`; slow, tests
only). Under a mesh context the kernel runs inside `jax.shard_map` on each device's share of the tokens (split
over every mesh axis that leaves whole 128-token chunks: the batch axes, and the model axis too, which would
otherwise repeat the same rows); the weight gradients are summed over the devices outside it.

The compiler cannot see inside a Pallas call: each call carries a `CostEstimate` (its matmul flops, the score
flops of the whole 128-token chunks it computes, and the HBM bytes of its operands and results), which the TPU
compiler's cost analysis adds to the program's.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P


KERNELS = ("pallas", "pallas_interpret")
CHUNK = 128  # tokens per score tile (the MXU's width)
LANES = 128


def _mm(a, b, contract_a: int, contract_b: int):
  return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())), preferred_element_type=jnp.float32)


def _probs(q, k, length: int, scale: float):
  """Softmax probabilities (float32) of one 128-token chunk, block-diagonal in rows of `length` tokens."""
  s = _mm(q, k, 1, 1) * scale
  shift = int(math.log2(length))
  rows = lax.broadcasted_iota(jnp.int32, s.shape, 0) >> shift
  cols = lax.broadcasted_iota(jnp.int32, s.shape, 1) >> shift
  s = jnp.where(rows == cols, s, -1e30)
  s = s - jnp.max(s, axis=-1, keepdims=True)
  p = jnp.exp(s)
  return p / jnp.sum(p, axis=-1, keepdims=True)


def _forward_kernel(x_ref, wq_ref, wk_ref, wv_ref, wo_ref, bo_ref, out_ref, o_scr, *, length, scale, heads):
  x = x_ref[...]
  dt = x.dtype
  acc = jnp.zeros(out_ref.shape, jnp.float32)
  for h in range(heads):
    q, k, v = (_mm(x, w[h], 1, 0).astype(dt) for w in (wq_ref, wk_ref, wv_ref))
    for c in range(x.shape[0] // CHUNK):
      rows = slice(c * CHUNK, (c + 1) * CHUNK)
      p = _probs(q[rows], k[rows], length, scale)
      o_scr[rows, :] = _mm(p.astype(dt), v[rows], 1, 0).astype(dt)
    acc = acc + _mm(o_scr[...], wo_ref[h], 1, 0)
  out_ref[...] = (acc + bo_ref[...].astype(jnp.float32)).astype(out_ref.dtype)


def _backward_kernel(x_ref, g_ref, wq_ref, wk_ref, wv_ref, wo_ref,
                     dx_ref, dwq_ref, dwk_ref, dwv_ref, dwo_ref, dbo_ref,
                     o_scr, dq_scr, dk_scr, dv_scr, *, length, scale, heads):
  @pl.when(pl.program_id(1) == 0)
  def _():
    for ref in (dwq_ref, dwk_ref, dwv_ref, dwo_ref, dbo_ref):
      ref[...] = jnp.zeros(ref.shape, ref.dtype)

  x, g = x_ref[...], g_ref[...]
  dt = x.dtype
  dx = jnp.zeros(dx_ref.shape, jnp.float32)
  for h in range(heads):
    q, k, v = (_mm(x, w[h], 1, 0).astype(dt) for w in (wq_ref, wk_ref, wv_ref))
    do = _mm(g, wo_ref[h], 1, 1).astype(dt)  # d(attention output) of this head
    for c in range(x.shape[0] // CHUNK):
      rows = slice(c * CHUNK, (c + 1) * CHUNK)
      qc, kc, vc, doc = q[rows], k[rows], v[rows], do[rows]
      p = _probs(qc, kc, length, scale)
      pd = p.astype(dt)
      o_scr[rows, :] = _mm(pd, vc, 1, 0).astype(dt)
      dv_scr[rows, :] = _mm(pd, doc, 0, 0).astype(dt)
      dp = _mm(doc, vc, 1, 1)
      ds = (p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)) * scale).astype(dt)
      dq_scr[rows, :] = _mm(ds, kc, 1, 0).astype(dt)
      dk_scr[rows, :] = _mm(ds, qc, 0, 0).astype(dt)
    dq, dk, dv = dq_scr[...], dk_scr[...], dv_scr[...]
    dx = dx + _mm(dq, wq_ref[h], 1, 1) + _mm(dk, wk_ref[h], 1, 1) + _mm(dv, wv_ref[h], 1, 1)
    dwq_ref[h] += _mm(x, dq, 0, 0)
    dwk_ref[h] += _mm(x, dk, 0, 0)
    dwv_ref[h] += _mm(x, dv, 0, 0)
    dwo_ref[h] += _mm(o_scr[...], g, 0, 0)
  dbo_ref[...] += jnp.sum(g.astype(jnp.float32), axis=0, keepdims=True)
  dx_ref[...] = dx.astype(dx_ref.dtype)


def _tokens_per_step(n: int) -> int:
  for t in (512, 256, 128):
    if n % t == 0:
      return t
  raise ValueError(f"the fused axial-attention kernel needs a multiple of {CHUNK} tokens per device, got {n}; "
                   "use attn_kernel='xla' for this shape")


def _flops(n: int, c: int, dp: int, heads: int, *, backward: bool) -> int:
  """Matmul flops of one call over n tokens (score matmuls over whole 128-token chunks)."""
  proj = 2 * n * c * dp * heads  # one projection, all heads
  att = 2 * n * CHUNK * dp * heads  # one score-sized matmul (q k^T or p v), all heads
  if not backward:
    return 4 * proj + 2 * att
  # Recomputed q, k, v; dO; o, dv, dP, dq, dk (+ recomputed scores); dx (3); dWq, dWk, dWv, dWo.
  return 3 * proj + proj + 6 * att + 3 * proj + 4 * proj


def _call_forward(x, wq, wk, wv, wo, bo, *, length, scale, interpret):
  n, c = x.shape
  heads, _, dp = wq.shape
  tb = _tokens_per_step(n)
  itemsize = x.dtype.itemsize
  weights = (3 * heads * c * dp + heads * dp * c) * wq.dtype.itemsize
  kernel = functools.partial(_forward_kernel, length=length, scale=scale, heads=heads)
  full = lambda shape: pl.BlockSpec(shape, lambda i: (0,) * len(shape))
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((n, c), x.dtype),
      grid=(n // tb,),
      in_specs=[pl.BlockSpec((tb, c), lambda i: (i, 0)), full(wq.shape), full(wk.shape), full(wv.shape),
                full(wo.shape), full(bo.shape)],
      out_specs=pl.BlockSpec((tb, c), lambda i: (i, 0)),
      scratch_shapes=[pltpu.VMEM((tb, dp), x.dtype)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
      cost_estimate=pl.CostEstimate(flops=_flops(n, c, dp, heads, backward=False),
                                    transcendentals=n * CHUNK * heads,
                                    bytes_accessed=2 * n * c * itemsize + weights),
      interpret=interpret,
      name="axial_attention_fwd",
  )(x, wq, wk, wv, wo, bo)


def _call_backward(x, g, wq, wk, wv, wo, *, length, scale, interpret):
  n, c = x.shape
  heads, _, dp = wq.shape
  tb = _tokens_per_step(n)
  # The weight gradients accumulate across the grid, whose steps then run in order on one core. Two independent
  # halves, each with its own accumulators (summed here), let a chip with two TensorCores (v4, v5p) split the work.
  parts = 2 if (n // tb) % 2 == 0 else 1
  steps = n // tb // parts
  itemsize = x.dtype.itemsize
  elems = 4 * heads * c * dp  # of the four weight matrices
  kernel = functools.partial(_backward_kernel, length=length, scale=scale, heads=heads)
  full = lambda shape: pl.BlockSpec(shape, lambda p, i: (0,) * len(shape))
  part = lambda shape: pl.BlockSpec((pl.Squeezed(),) + shape, lambda p, i: (p,) + (0,) * len(shape))
  f32 = lambda shape: jax.ShapeDtypeStruct((parts,) + shape, jnp.float32)
  tokens = pl.BlockSpec((tb, c), lambda p, i: (p * steps + i, 0))
  dx, *dws = pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((n, c), x.dtype), f32(wq.shape), f32(wk.shape), f32(wv.shape),
                 f32(wo.shape), f32((1, c))),
      grid=(parts, steps),
      in_specs=[tokens, tokens, full(wq.shape), full(wk.shape), full(wv.shape), full(wo.shape)],
      out_specs=(tokens, part(wq.shape), part(wk.shape), part(wv.shape), part(wo.shape), part((1, c))),
      scratch_shapes=[pltpu.VMEM((tb, dp), x.dtype) for _ in range(4)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
      cost_estimate=pl.CostEstimate(flops=_flops(n, c, dp, heads, backward=True),
                                    transcendentals=n * CHUNK * heads,
                                    bytes_accessed=3 * n * c * itemsize + elems * wq.dtype.itemsize
                                    + 4 * parts * (elems + c)),
      interpret=interpret,
      name="axial_attention_bwd",
  )(x, g, wq, wk, wv, wo)
  return (dx, *(d.sum(0) for d in dws))


def _token_spec(shape):
  """The spec of the `(N, C)` token matrix on the context mesh, or None without one: the tokens split over every
  mesh axis (in mesh order) whose split leaves each device whole 128-token chunks. Rows are independent, so a
  model axis that splits the channels elsewhere splits the tokens here rather than repeat the same work."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return None
  axes, size = [], 1
  for name in mesh.axis_names:
    if mesh.shape[name] > 1 and shape[0] % (size * mesh.shape[name] * CHUNK) == 0:
      axes.append(name)
      size *= mesh.shape[name]
  return P(tuple(axes) or None, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _attend(x, wq, wk, wv, wo, bo, length, scale, interpret):
  return _sharded_forward(x, wq, wk, wv, wo, bo, length, scale, interpret)


def _sharded_forward(x, wq, wk, wv, wo, bo, length, scale, interpret):
  fn = functools.partial(_call_forward, length=length, scale=scale, interpret=interpret)
  spec = _token_spec(x.shape)
  if spec is not None:
    fn = jax.shard_map(fn, mesh=jax.sharding.get_abstract_mesh(), in_specs=(spec, P(), P(), P(), P(), P()),
                       out_specs=spec, check_vma=False)
  return fn(x, wq, wk, wv, wo, bo)


def _attend_fwd(x, wq, wk, wv, wo, bo, length, scale, interpret):
  return _sharded_forward(x, wq, wk, wv, wo, bo, length, scale, interpret), (x, wq, wk, wv, wo, bo)


def _attend_bwd(length, scale, interpret, residuals, g):
  x, wq, wk, wv, wo, bo = residuals
  fn = functools.partial(_call_backward, length=length, scale=scale, interpret=interpret)
  spec = _token_spec(x.shape)
  if spec is None:
    dx, dwq, dwk, dwv, dwo, dbo = fn(x, g.astype(x.dtype), wq, wk, wv, wo)
  else:
    devices = spec[0]

    def local(x, g, wq, wk, wv, wo):  # per-device weight gradients, stacked along a new leading axis
      dx, *dws = fn(x, g, wq, wk, wv, wo)
      return (dx, *(d[None] for d in dws))

    stacked = P(devices)
    dx, *dws = jax.shard_map(local, mesh=jax.sharding.get_abstract_mesh(),
                             in_specs=(spec, spec, P(), P(), P(), P()),
                             out_specs=(spec,) + (stacked,) * 5, check_vma=False)(x, g.astype(x.dtype), wq, wk,
                                                                                  wv, wo)
    dwq, dwk, dwv, dwo, dbo = (d.sum(0) for d in dws)
  return (dx, dwq.astype(wq.dtype), dwk.astype(wk.dtype), dwv.astype(wv.dtype), dwo.astype(wo.dtype),
          dbo.reshape(bo.shape).astype(bo.dtype))


_attend.defvjp(_attend_fwd, _attend_bwd)


def axis_attention(x: jax.Array, wq: jax.Array, wk: jax.Array, wv: jax.Array, wo: jax.Array, bo: jax.Array, *,
                   axis: int, interpret: bool = False) -> jax.Array:
  """`AxisAttention`'s output by the fused kernel: x `(B, T, H, W, C)`, w{q,k,v} `(C, n, d)`, wo `(n, d, C)`,
  bo `(C,)` -> `(B, T, H, W, C)` in x's dtype (weights are cast to it). The attended axis' length must divide 128."""
  length = x.shape[axis]
  if length < 1 or CHUNK % length:
    raise ValueError(f"the fused axial-attention kernel attends along rows whose length divides {CHUNK}, got "
                     f"{length} (axis {axis} of {x.shape}); use attn_kernel='xla' for this latent grid")
  c = x.shape[-1]
  heads, d = wq.shape[1:]
  dp = -(-d // LANES) * LANES
  pad = lambda w: jnp.pad(w, ((0, 0), (0, 0), (0, dp - d)))
  wq_, wk_, wv_ = (pad(jnp.transpose(w, (1, 0, 2))).astype(x.dtype) for w in (wq, wk, wv))  # (n, C, dp)
  wo_ = jnp.pad(wo, ((0, 0), (0, dp - d), (0, 0))).astype(x.dtype)  # (n, dp, C)
  bo_ = bo.reshape(1, c).astype(x.dtype)
  moved = jnp.moveaxis(x, axis, -2)
  out = _attend(moved.reshape(-1, c), wq_, wk_, wv_, wo_, bo_, length, 1.0 / math.sqrt(d), interpret)
  return jnp.moveaxis(out.reshape(moved.shape), -2, axis)
