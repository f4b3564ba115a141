"""deep_cnn_v3: deep_cnn_v2 with the full augmentation set.

Redoes the original study's deeper CNN v3, which "needed a long time to reach 40%" (no final
figure reported).
"""
from fer_jax.experiments._common import full_augmentation
from fer_jax.experiments.deep_cnn_v2 import get_config as v2_config


def get_config():
    c = full_augmentation(v2_config())
    c.description = "deeper CNN v2 + full augmentation (original study: slow to reach 40%)"
    return c
