"""Released models (installed as fer_jax.released): each folder is a checkpoint with its
model card; `final` is the default of evaluate, visualize, predict and ExpressionPredictor.
Made by `python -m fer_jax.release`."""
