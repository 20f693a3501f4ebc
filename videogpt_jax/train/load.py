"""Models for inference from a training workdir: `load_vqvae(workdir)`, `load_gpt(workdir)`.

Each returns `(module, variables, config)`: the module rebuilt from the config saved with the checkpoint, its
variables restored onto a replicated single-device layout (or `mesh` if given), and that config. `workdir` is a
training run's workdir or a directory written by `python -m videogpt_jax.convert` (an imported original
checkpoint), so a released VQ-VAE can serve as a prior's `config.vqvae_workdir` and be evaluated or sampled.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import ml_collections

from videogpt_jax import checkpointing, sharding
from videogpt_jax.models import gpt as gpt_lib
from videogpt_jax.models import vqvae as vqvae_lib
from videogpt_jax.train import common


def _mesh(mesh: jax.sharding.Mesh | None) -> jax.sharding.Mesh:
  if mesh is not None:
    return mesh
  return sharding.make_mesh(ml_collections.ConfigDict({"mesh": (1, 1, 1)}), devices=jax.local_devices()[:1])


def _checkpointer(workdir: str | os.PathLike) -> checkpointing.Checkpointer:
  """A training workdir (`<workdir>/checkpoints`) or a directory written by `python -m videogpt_jax.convert`."""
  root = common.checkpoint_dir(workdir)
  if not root.exists() and pathlib.Path(workdir).exists():
    root = pathlib.Path(workdir)
  return checkpointing.Checkpointer(root, read_only=True)


def _restore_converted(checkpointer, config, step, mesh):
  """Variables of an imported original checkpoint: the state is the variables themselves."""
  if config["kind"] == "vqvae":
    from videogpt_jax.convert import torch_videogpt
    module = vqvae_lib.VQVAE(**_tuples(config["model"]))
    abstract = torch_videogpt.abstract_variables(module)
  else:
    from videogpt_jax.convert import torch_gpt
    module = gpt_lib.GPT(**_tuples(config["model"]))
    abstract = torch_gpt.abstract_variables(module)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
                        abstract)
  variables = checkpointer.restore(target, step).state
  checkpointer.close()
  return module, variables, ml_collections.ConfigDict(config)


def _tuples(kwargs: dict) -> dict:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def _restore(workdir: str | os.PathLike, step: int | None, build, mesh, kind: str):
  checkpointer = _checkpointer(workdir)
  raw = checkpointer.read_config(step)
  if "kind" in raw:  # Imported from the original PyTorch implementation.
    if raw["kind"] != kind:
      raise checkpointing.CheckpointError(f"{workdir} holds a converted {raw['kind']}, not a {kind}")
    return _restore_converted(checkpointer, raw, step, _mesh(mesh))
  config = ml_collections.ConfigDict(raw)
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

  return _restore(workdir, step, build, mesh, "vqvae")


def load_gpt(workdir: str | os.PathLike, step: int | None = None, mesh: jax.sharding.Mesh | None = None
             ) -> tuple[Any, dict, ml_collections.ConfigDict]:
  """The prior of a `gpt_trainer` run: `variables` has `params` and `codebook` (the VQ-VAE's embeddings)."""
  from videogpt_jax.train import gpt_trainer

  def build(config):
    model = gpt_trainer.build_model(config)
    return model, gpt_trainer.init_fn(config, model, common.make_optimizer(config))

  return _restore(workdir, step, build, mesh, "gpt")
