"""simple_cnn_v2: the simple CNN with BatchNorm, augmentation, weight decay and a plateau schedule.

Redoes the original study's simple CNN v2 (lr 5e-4, weight decay 1e-4,
ReduceLROnPlateau, early stopping patience 7). The original study reported 59.11% best
validation accuracy on its 80/20 split of Training: its best result overall.
"""
from fer_jax.experiments._common import original_study_augmentation
from fer_jax.config import base_config


def get_config():
    c = original_study_augmentation(base_config())
    c.description = "simple CNN + BatchNorm + augmentation + AdamW + plateau (original study: 59.11%)"
    c.model = "simple_cnn_v2"
    c.learning_rate = 5e-4
    c.weight_decay = 1e-4
    c.early_stopping_patience = 7
    return c
