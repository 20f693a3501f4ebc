"""A config's train step, or a prior's sampler, lowered with abstract, sharded arguments over given devices: what
the AOT compile tool compiles.

The train step is the trainers' own (`steps.vqvae_program` / `steps.gpt_program`: loss, clipping, schedule,
shardings, donation); the sampler is `sampling.sample`'s jitted loop with the variables laid out as training lays
them out and the batch split over `data` x `fsdp`. No data, checkpoint or parameter is touched. A prior's code grid
and codebook come from its VQ-VAE's config.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from videogpt_jax import aot, sharding
from videogpt_jax.models import gpt as gpt_lib
from videogpt_jax.models import sampling, splash_attention
from videogpt_jax.train import steps


def stage(config: Any) -> str:
  """"gpt" for a prior's config (it names a VQ-VAE run), else "vqvae"."""
  return "gpt" if "vqvae_workdir" in config else "vqvae"


def train_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                  vqvae_config: ml_collections.ConfigDict | None = None) -> steps.TrainProgram:
  """The trainer's program for `config` on `mesh`; a prior trains on pre-encoded codes (its batch is `codes`)."""
  if stage(config) == "vqvae":
    return steps.vqvae_program(config, mesh)
  if vqvae_config is None:
    raise ValueError("a prior's config needs its VQ-VAE's config (the code grid and codebook size)")
  num_classes = int(config.data.get("num_classes", 0)) or None
  return steps.gpt_program(steps.derive_gpt_config(config, vqvae_config, num_classes), mesh)


def compile_train_step(config: ml_collections.ConfigDict, devices: Sequence[jax.Device], *,
                       vqvae_config: ml_collections.ConfigDict | None = None, layer_costs: bool = True
                       ) -> tuple[aot.Report, Any]:
  """Compiles `config`'s train step over `devices` (all of them, in `config.mesh`): `(aot.Report, compiled)`.

  A prior whose blocks run under `nn.scan` (`model.scan_layers`) compiles to a loop, whose body the compiler's cost
  analysis counts once, not once per layer. With `layer_costs` the report's flops and bytes are then those of the
  same step compiled with 1 and with 2 blocks in the loop form, extrapolated to the config's depth (the blocks are
  identical, so the cost is affine in their number); the compiler's own count of the loop program is kept in
  `report.loop_flops` / `report.loop_bytes_accessed`, the probes' figures in `report.block_probes`. Memory, the
  verdict and `compile_s` are always the real program's.
  """
  report, compiled = _compile(config, devices, vqvae_config)
  if (layer_costs and report.fits and stage(config) == "gpt" and config.model.get("scan_layers", False)):
    layers = int(config.model.layers)
    one, two = (_compile(_unscanned(config, n), devices, vqvae_config)[0] for n in (1, 2))
    if not (one.fits and two.fits):
      raise RuntimeError("the 1- and 2-block probe compiles of a prior that fits did not fit")
    report.loop_flops, report.loop_bytes_accessed = report.flops, report.bytes_accessed
    report.block_probes = {str(n): {"flops": r.flops, "bytes_accessed": r.bytes_accessed, "compile_s": r.compile_s}
                           for n, r in ((1, one), (2, two))}
    report.flops = one.flops + (layers - 1) * (two.flops - one.flops)
    report.bytes_accessed = one.bytes_accessed + (layers - 1) * (two.bytes_accessed - one.bytes_accessed)
    report.cost_note = (f"flops and bytes of the {layers} scanned blocks extrapolated from 1- and 2-block compiles "
                        f"(the compiler counts a loop's body once: {report.loop_flops / 1e12:.3f} TFLOP, "
                        f"{report.loop_bytes_accessed / 1e9:.2f} GB for the loop program)")
  return report, compiled


def pallas_flops(model: Any, mesh: jax.sharding.Mesh, batch: int) -> float:
  """Per-chip flops of a train step's Pallas (splash) attention kernels, which the compiler's cost analysis does not
  see into (it counts their operands' bytes, not their flops): 0 for models that run none. Counted from the tiles
  splash computes (`splash_attention.computed_tiles`: masked-out tiles are skipped, partly masked ones computed
  whole), for every block's self-attention and, with frame conditioning, cross-attention."""
  if not isinstance(model, gpt_lib.GPT) or not model.attn_kernel.startswith("splash"):
    return 0.0
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  examples = batch // shards if batch % shards == 0 else batch
  heads = model.heads // mesh.shape["model"] if model.heads % mesh.shape["model"] == 0 else model.heads
  pattern, length, tile = model.attention_pattern, model.seq_len, splash_attention.tile_size(model.seq_len)
  d = model.head_dim
  per_head = splash_attention.train_flops(splash_attention.computed_tiles(pattern), tile, tile, d, d,
                                          recompute=model.remat)
  if model.n_cond_frames:
    cond_len = int(np.prod(model.frame_cond_shape))
    kv_tiles = -(-cond_len // splash_attention.TILE)
    per_head += splash_attention.train_flops((length // tile) * kv_tiles, tile, splash_attention.TILE, d,
                                             gpt_lib.COND_DIM // model.heads, recompute=model.remat)
  return float(model.layers * examples * heads * per_head)


def _unscanned(config: ml_collections.ConfigDict, layers: int) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(config.to_dict())
  out.model.scan_layers, out.model.layers = False, layers
  return out


def _compile(config, devices, vqvae_config) -> tuple[aot.Report, Any]:
  mesh = sharding.make_mesh(config, devices=devices)
  program = train_program(config, mesh, vqvae_config)
  with jax.set_mesh(mesh):
    report, compiled = aot.compile_step(
        lambda: program.train_step.lower(program.abstract_state, program.abstract_batch), devices)
  report.mesh = dict(mesh.shape)
  report.kernel_flops = pallas_flops(program.model, mesh, int(config.batch_size))
  return report, compiled


def compile_sampler(config: ml_collections.ConfigDict, devices: Sequence[jax.Device], *,
                    vqvae_config: ml_collections.ConfigDict, batch: int | None = None) -> tuple[aot.Report, Any]:
  """Compiles a prior's KV-cached sampler (temperature sampling, no top-k/top-p) for `batch` samples (default the
  config's global batch) over `devices`, the conditioning and the caches split over the batch axes.

  The report's `kv_cache_bytes` is the caches' share per chip. Its flops and bytes are the compiler's count of
  the program, whose decode loop it counts once, not once per token: per-token figures, not a step's.
  """
  if stage(config) != "gpt":
    raise ValueError("only a prior has a sampler: --program=sample needs a prior's config")
  mesh = sharding.make_mesh(config, devices=devices)
  program = train_program(config, mesh, vqvae_config)
  gpt, state = program.model, program.abstract_state
  n = int(batch or config.batch_size)
  sharding.local_batch_size(n, program.batch_sharding)
  variables = {"params": state.params, **state.model_state}

  def spec(shape, dtype, where):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=where)

  rows, scalar = program.batch_sharding, sharding.replicated(mesh)
  cond = {}
  if gpt.n_cond_frames:
    cond["frames"] = spec((n, gpt.n_cond_frames, *gpt.frame_shape, 3), jax.numpy.float32, rows)
  if gpt.class_cond_dim:
    cond["label"] = spec((n,), jax.numpy.int32, rows)
  key = spec((), jax.random.key(0).dtype, scalar)
  temperature = spec((), jax.numpy.float32, scalar)
  fn = sampling.jitted_sampler(gpt, n)
  with jax.set_mesh(mesh):
    report, compiled = aot.compile_step(lambda: fn.lower(variables, key, cond, temperature, temperature, None),
                                        devices)
    report.kv_cache_bytes = sampling.kv_cache_bytes_per_device(gpt, n)
  report.mesh, report.program, report.tokens = dict(mesh.shape), "sample", gpt.seq_len
  return report, compiled
