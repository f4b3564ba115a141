"""PyTorch counterparts of the fer_jax models and their timing, for `python -m fer_jax.bench`."""
