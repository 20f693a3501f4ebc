"""VideoGPT in JAX/Flax: a VQ-VAE over video and a GPT prior over its discrete latents."""

__version__ = "0.1.0"
