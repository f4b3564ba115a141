"""deep_cnn_v2: the deeper CNN with more regularization (dropout 0.7, spatial dropout, narrower top).

Redoes the original study's deeper CNN v2, whose report repeated v1's numbers (57.72%),
so no figure of its own exists.
"""
from fer_jax.experiments.deep_cnn_v1 import get_config as v1_config


def get_config():
    c = v1_config()
    c.description = "deeper CNN, more regularization (original study: reported v1's numbers)"
    c.model = "deep_cnn_v2"
    return c
