"""simple_cnn_v1: the original study's first, plain CNN.

Redoes the original study's simple CNN v1 (two 5x5 convs, dropout 0.3, Adam lr 1e-3, no
augmentation). The original study reported 57.66% validation accuracy on its 80/20 split of
Training, early-stopped at epoch 12.
"""
from fer_jax.config import base_config


def get_config():
    c = base_config()
    c.description = "plain CNN, no BatchNorm, no augmentation (original study: 57.66%, stopped at epoch 12)"
    c.model = "simple_cnn_v1"
    c.epochs = 30
    c.batch_size = 64
    c.learning_rate = 1e-3
    c.early_stopping_patience = 5
    c.plateau.factor = 1.0  # no plateau: the original study used a constant learning rate here
    return c
