"""deep_cnn_v1: four conv blocks (32-64-128-256), global average pooling, Dense 512.

Redoes the original study's deeper CNN v1: 57.72% validation accuracy with 93.9% training
accuracy (overfitting), on its 80/20 split of Training.
"""
from fer_jax.experiments._common import original_study_augmentation
from fer_jax.config import base_config


def get_config():
    c = original_study_augmentation(base_config())
    c.description = "deeper CNN (original study: 57.72%, train 93.9%: overfitting)"
    c.model = "deep_cnn_v1"
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.early_stopping_patience = 7
    return c
