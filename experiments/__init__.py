"""Entry points (`train_vqvae.py`, `train_gpt.py`, `sample.py`) and their ml_collections configs."""
