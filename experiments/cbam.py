"""cbam: the original study's CNN with CBAM attention.

Redoes the original study's CBAM experiment (three conv stages of 32/64/128 with channel and
spatial attention). The original study expected 60-65% but reported no run. Here: 66.2%
PublicTest after 30 epochs (66.8% ten-crop), 111 minutes; a member of `ensemble`.
"""
from fer_jax.experiments._common import original_study_augmentation
from fer_jax.config import base_config


def get_config():
    c = original_study_augmentation(base_config())
    c.description = "CNN with CBAM attention (original study: expected 60-65%, no run reported)"
    c.model = "cbam_cnn"
    c.epochs = 30
    c.batch_size = 64
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.augment.scale_range = (0.9, 1.1)
    c.plateau.patience = 3
    c.early_stopping_patience = 8
    return c
