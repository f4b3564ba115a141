"""Probes and scripts that time fer_jax (they import the library; the library never imports them)."""
