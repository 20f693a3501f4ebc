"""A config's train program lowered with abstract, sharded arguments over given devices: what the AOT compile
tool compiles.

The program is the trainers' own (`steps.vqvae_program` / `steps.gpt_program`: loss, clipping, schedule,
shardings, donation); no data, checkpoint or parameter is touched. A prior's code grid and codebook come from its
VQ-VAE's config.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections

from videogpt_jax import aot, sharding
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
