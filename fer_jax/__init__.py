"""fer_jax: facial expression recognition on FER2013 with JAX and Flax."""

__version__ = "0.1.0"
