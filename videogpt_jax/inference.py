"""Models for inference from a training workdir or a converted checkpoint directory.

`load_vqvae(workdir, step=None, mesh=None)` and `load_gpt(workdir, step=None, mesh=None)` return
`(module, variables, config)`; see `videogpt_jax.train.load`, which restores them.
"""
from videogpt_jax.train.load import load_gpt, load_vqvae  # noqa: F401

__all__ = ["load_gpt", "load_vqvae"]
