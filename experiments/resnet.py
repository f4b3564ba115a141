"""resnet: ResNet-18 for 48x48 inputs (3x3 stem, no max-pool).

Redoes the seed's ResNet experiment, which reported no figure.
"""
from fer_jax.experiments._common import seed_augmentation
from fer_jax.config import base_config


def get_config():
    c = seed_augmentation(base_config())
    c.description = "ResNet-18, 3x3 stem (seed: no figure)"
    c.model = "resnet18"
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.early_stopping_patience = 7
    c.wandb.experiment_type = "resnet"
    return c
