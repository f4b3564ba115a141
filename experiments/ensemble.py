"""ensemble: the CBAM CNN, the regularized deep CNN and ResNet-18, probabilities averaged.

Redoes the seed's ensemble step, which reported no figure. Each member is its own
experiment (trained in turn under WORKDIR/members/NAME, resuming any already trained);
the ensemble is scored on PublicTest with horizontal-flip test-time augmentation.
"""
from fer_jax.config import base_config


def get_config():
    c = base_config()
    c.description = "average of cbam, deep_cnn_v2 and resnet members (seed: no figure)"
    c.ensemble.members = ("cbam", "deep_cnn_v2", "resnet")
    c.ensemble.tta = "flip"
    c.wandb.experiment_type = "ensemble"
    return c
