"""The library of `python -m fer_jax.bench`: `steps` (fer_jax's train and eval steps of a
model, ready to time), `measure` (timing them against PyTorch's copies, the input
pipeline, the devices), `report` (the table and the JSON records)."""
