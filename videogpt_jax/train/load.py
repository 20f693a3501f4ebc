"""Models for inference from a training workdir: `load_vqvae(workdir)`, `load_gpt(workdir)`.

Each returns `(module, variables, config)`: the module rebuilt from the config saved with the checkpoint, its
variables restored onto a replicated single-device layout (or `mesh` if given), and that config.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from videogpt_jax import checkpointing, sharding
from videogpt_jax.train import common


def _mesh(mesh: jax.sharding.Mesh | None) -> jax.sharding.Mesh:
  if mesh is not None:
    return mesh
  return sharding.make_mesh(ml_collections.ConfigDict({"mesh": (1, 1, 1)}), devices=jax.local_devices()[:1])


def _restore(workdir: str | os.PathLike, step: int | None, build, mesh):
  checkpointer = checkpointing.Checkpointer(common.checkpoint_dir(workdir), read_only=True)
  config = ml_collections.ConfigDict(checkpointer.read_config(step))
  module, init_fn = build(config)
  _, abstract = common.abstract_state(init_fn, _mesh(mesh))
  state = checkpointer.restore(abstract, step).state
  checkpointer.close()
  return module, {"params": state.params, **state.model_state}, config


def load_vqvae(workdir: str | os.PathLike, step: int | None = None, mesh: jax.sharding.Mesh | None = None
               ) -> tuple[Any, dict, ml_collections.ConfigDict]:
  """The VQ-VAE of a `vqvae_trainer` run: `variables` has `params`, `batch_stats` and `codebook`."""
  from videogpt_jax.train import vqvae_trainer

  def build(config):
    model = vqvae_trainer.build_model(config)
    return model, vqvae_trainer.init_fn(config, model, common.make_optimizer(config))

  return _restore(workdir, step, build, mesh)


def load_gpt(workdir: str | os.PathLike, step: int | None = None, mesh: jax.sharding.Mesh | None = None
             ) -> tuple[Any, dict, ml_collections.ConfigDict]:
  """The prior of a `gpt_trainer` run: `variables` has `params` and `codebook` (the VQ-VAE's embeddings)."""
  from videogpt_jax.train import gpt_trainer

  def build(config):
    model = gpt_trainer.build_model(config)
    return model, gpt_trainer.init_fn(config, model, common.make_optimizer(config))

  return _restore(workdir, step, build, mesh)
