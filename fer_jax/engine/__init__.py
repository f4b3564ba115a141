"""The training engine: steps, parallelism, optimizer, checkpoints, logging."""
