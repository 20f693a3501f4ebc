"""Models for inference from a training workdir: `load_vqvae(workdir)`, `load_gpt(workdir)`.

Each returns `(module, variables, config)`: the module rebuilt from the config saved with the checkpoint, its
variables restored onto a replicated single-device layout (or `mesh` if given), and that config. Only the
parameters and the model state are read: no optimizer is built and no optimizer state is allocated. `workdir` is a
training run's workdir or a directory written by `python -m videogpt_jax.convert` (an imported original
checkpoint), so a released VQ-VAE can serve as a prior's `config.vqvae_workdir` and be evaluated or sampled.

The module is built for the platform of the devices it is loaded onto (the formulation is a speed choice: the
weights are the same on every platform); the config returned is the one the checkpoint recorded.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from videogpt_jax import checkpointing, sharding
from videogpt_jax.convert import torch_gpt, torch_videogpt
from videogpt_jax.models import gpt as gpt_lib
from videogpt_jax.models import conditioning, platforms
from videogpt_jax.models import vqvae as vqvae_lib

CHECKPOINTS = "checkpoints"  # A training workdir keeps its checkpoints here.


def _mesh(mesh: jax.sharding.Mesh | None) -> jax.sharding.Mesh:
  if mesh is not None:
    return mesh
  return sharding.make_mesh(ml_collections.ConfigDict({"mesh": (1, 1, 1)}), devices=jax.local_devices()[:1])


def _checkpointer(workdir: str | os.PathLike) -> checkpointing.Checkpointer:
  """A training workdir (`<workdir>/checkpoints`) or a directory written by `python -m videogpt_jax.convert`."""
  root = pathlib.Path(workdir) / CHECKPOINTS
  if not root.exists() and pathlib.Path(workdir).exists():
    root = pathlib.Path(workdir)
  return checkpointing.Checkpointer(root, read_only=True)


def _tuples(kwargs: dict) -> dict:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def _replicated(abstract: Any, mesh: jax.sharding.Mesh) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
                      abstract)


def _restore_converted(checkpointer, config, step, mesh):
  """Variables of an imported original checkpoint: its single item is the variables themselves."""
  kwargs = {**_tuples(config["model"]), "platform": platforms.of_devices(mesh.devices.flat)}
  if config["kind"] == "vqvae":
    module = vqvae_lib.VQVAE(**kwargs)
    abstract = torch_videogpt.abstract_variables(module)
  else:
    module = gpt_lib.GPT(**kwargs)
    abstract = torch_gpt.abstract_variables(module)
  variables = checkpointer.restore(_replicated(abstract, mesh), step).state
  return module, variables, ml_collections.ConfigDict(config)


def _restore(workdir: str | os.PathLike, step: int | None, mesh: jax.sharding.Mesh | None, kind: str,
             build: Callable[[ml_collections.ConfigDict], nn.Module],
             init: Callable[[nn.Module, ml_collections.ConfigDict, jax.Array], Any], collections: tuple[str, ...]):
  mesh = _mesh(mesh)
  checkpointer = _checkpointer(workdir)
  try:
    raw = checkpointer.read_config(step)
    if "kind" in raw:  # Imported from the original PyTorch implementation.
      if raw["kind"] != kind:
        raise checkpointing.CheckpointError(f"{workdir} holds a converted {raw['kind']}, not a {kind}")
      return _restore_converted(checkpointer, raw, step, mesh)
    config = ml_collections.ConfigDict(raw)
    built = ml_collections.ConfigDict(raw)
    built.platform = platforms.of_devices(mesh.devices.flat)
    module = build(built)
    # The variables' shapes and logical layout, traced without allocating anything.
    boxed = jax.eval_shape(lambda r: init(module, config, r), jax.random.key(0))
    shardings = sharding.logical_to_shardings(boxed, mesh)
    abstract = checkpointing.abstract_with_shardings(nn.meta.unbox(boxed), shardings)
    model_state = {k: abstract[k] for k in collections if k in abstract}
    restored = checkpointer.restore_variables(abstract["params"], model_state, step).state
    return module, {"params": restored["params"], **restored["model_state"]}, config
  finally:
    checkpointer.close()


def _init_vqvae(module: vqvae_lib.VQVAE, config: ml_collections.ConfigDict, rng: jax.Array) -> Any:
  res = int(config.data.resolution)
  params_rng, codebook_rng = jax.random.split(rng)
  return module.init({"params": params_rng, "codebook": codebook_rng},
                     jnp.zeros((1, int(config.data.seq_len), res, res, 3), jnp.float32), train=False)


def _init_gpt(module: gpt_lib.GPT, config: ml_collections.ConfigDict, rng: jax.Array) -> Any:
  del config
  frames = jnp.zeros((1, module.n_cond_frames, *module.frame_shape, 3)) if module.n_cond_frames else None
  label = jnp.zeros((1,), jnp.int32) if module.class_cond_dim else None
  return module.init({"params": rng}, jnp.zeros((1, *module.shape), jnp.int32),
                     cond=conditioning.make_cond(frames, label), deterministic=True)


def load_vqvae(workdir: str | os.PathLike, step: int | None = None, mesh: jax.sharding.Mesh | None = None
               ) -> tuple[Any, dict, ml_collections.ConfigDict]:
  """The VQ-VAE of a `vqvae_trainer` run: `variables` has `params`, `batch_stats` and `codebook`."""
  return _restore(workdir, step, mesh, "vqvae", vqvae_lib.vqvae_from_config, _init_vqvae,
                  ("batch_stats", "codebook"))


def load_gpt(workdir: str | os.PathLike, step: int | None = None, mesh: jax.sharding.Mesh | None = None
             ) -> tuple[Any, dict, ml_collections.ConfigDict]:
  """The prior of a `gpt_trainer` run: `variables` has `params` and `codebook` (the VQ-VAE's embeddings)."""
  return _restore(workdir, step, mesh, "gpt", gpt_lib.gpt_from_config, _init_gpt, ("codebook",))
