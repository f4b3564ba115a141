"""PyTorch copies of the models and their train and eval steps, the reference that
`python -m fer_jax.bench` times fer_jax against (PyTorch: the `bench` extra).

Inside the package, not in benchmarks/, so that the bench command imports them like any
other library module, from a checkout or an installed wheel; benchmarks/ holds scripts
that import the library, never the reverse. Importing this package needs torch.
"""
