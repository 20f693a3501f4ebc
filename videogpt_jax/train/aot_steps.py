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

from videogpt_jax import aot, sharding
from videogpt_jax.models import sampling
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
                       vqvae_config: ml_collections.ConfigDict | None = None) -> tuple[aot.Report, Any]:
  """Compiles `config`'s train step over `devices` (all of them, in `config.mesh`): `(aot.Report, compiled)`."""
  mesh = sharding.make_mesh(config, devices=devices)
  program = train_program(config, mesh, vqvae_config)
  with jax.set_mesh(mesh):
    report, compiled = aot.compile_step(
        lambda: program.train_step.lower(program.abstract_state, program.abstract_batch), devices)
  report.mesh = dict(mesh.shape)
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
