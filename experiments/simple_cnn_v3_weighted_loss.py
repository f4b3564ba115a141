"""simple_cnn_v3_weighted_loss: the v3 recipe with the class-weighted loss only.

Not an experiment of the original study: the fix for the original study's v3 collapse
(one imbalance correction, not two). The original study reported no figure for it.
"""
from fer_jax.experiments.simple_cnn_v3 import get_config as v3_config


def get_config():
    c = v3_config()
    c.description = "class-weighted loss only, no balanced sampling (original study: not run)"
    c.balanced_sampling = False
    return c
