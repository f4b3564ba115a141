"""resnet: ResNet-18 (BasicBlocks 2-2-2-2) sized for 48x48 faces on a CPU.

Redoes the original study's ResNet experiment, which reported no figure. Stage widths are
32-64-128-256 (half of ImageNet's) and the stem is a 3x3 conv followed by a 2x2
max-pool, so the stages see 24, 12, 6 and 3 pixels: about 1/16 of the compute of
the full-width ResNet-18 without pooling (which trains at about 19 images/s on a
2-core CPU against 290 for this one; set model_kwargs.width=64 and
model_kwargs.stem=cifar for it). It is the first stage of `final`, which starts from
runs/resnet. Here: 65.3% PublicTest after 30 epochs (67.0% ten-crop), 66 minutes.
"""
from fer_jax.experiments._common import original_study_augmentation
from fer_jax.config import base_config


def get_config():
    c = original_study_augmentation(base_config())
    c.description = "ResNet-18, widths 32-256, 3x3 stem + 2x2 pool (original study: no figure)"
    c.model = "resnet18"
    c.model_kwargs.width = 32
    c.model_kwargs.stem = "pool"
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.early_stopping_patience = 7
    return c
