"""VideoGPT in JAX/Flax: a VQ-VAE over video and a GPT prior over its discrete latents."""

__version__ = "0.1.0"


def __getattr__(name: str):
  # Lazy so that `import videogpt_jax` stays light (no JAX/Flax import until a model API is used).
  if name == "sample":
    from videogpt_jax.models.sampling import sample
    return sample
  raise AttributeError(f"module 'videogpt_jax' has no attribute {name!r}")
