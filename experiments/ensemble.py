"""ensemble: the final model (ResNet-18, two stages) and the CBAM CNN, probabilities averaged.

Redoes the original study's ensemble step, which reported no figure. Each member is its own
experiment, trained in turn under WORKDIR/members/NAME (resuming any already
trained): `cbam`, then `resnet`, then `final`, which starts from the `resnet` member
trained here. `resnet` has weight 0: it is trained as `final`'s first stage and not
averaged in, since adding it to final + cbam lowered PublicTest accuracy (68.6% against
69.2%, ten-crop; docs/results/final_model.md). That choice, like the members', was made
on PublicTest. Scored on PublicTest with ten-crop test-time augmentation. About 3.3
hours on a 2-core CPU.
"""
from fer_jax.config import base_config


def get_config():
    c = base_config()
    c.description = "average of the final (resnet stage 2) and cbam members (original study: no figure)"
    c.ensemble.members = ("cbam", "resnet", "final")
    c.ensemble.weights = (1.0, 0.0, 1.0)
    c.eval_tta = "flip_crops"  # the average of the members, scored once
    return c
