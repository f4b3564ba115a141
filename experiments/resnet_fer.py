"""resnet_fer: ResNet-18 at full width (64-512) "with tricks" (reported 73.7% on FER2013).

The BasicBlock ResNet-18 with the 3x3 stride-1 stem (fer_jax/models/resnet.py), trained
on random 40x40 crops of the 48x48 faces with mirror images and small rotations, mixup
(alpha 0.2) and label smoothing 0.1 on the mixed targets, SGD with Nesterov momentum at
0.1 with weight decay 5e-4, a one-epoch warm-up and a cosine to zero over 300 epochs
(no plateau), and an exponential moving average of the weights (decay 0.999) as the
evaluated and checkpointed model. Evaluated with the ten-crop (`--tta flip_crops`).
The compute this takes on a CPU is in docs/results/accuracy_plan.md.
"""
from fer_jax.config import base_config
from fer_jax.experiments._common import original_study_augmentation


def get_config():
    c = original_study_augmentation(base_config())
    c.description = "ResNet-18 64-512, 40x40 crops, mixup, label smoothing, SGD cosine, EMA, 300 epochs"
    c.model = "resnet18"
    c.model_kwargs.width = 64
    c.model_kwargs.stem = "cifar"
    c.augment.random_crop = 40
    c.augment.translate_frac = 0.0  # the random crop does the shifting
    c.mixup_alpha = 0.2
    c.label_smoothing = 0.1
    c.optimizer = "nesterov"
    c.momentum = 0.9
    c.learning_rate = 0.1
    c.weight_decay = 5e-4
    c.batch_size = 128
    c.epochs = 300
    c.lr_schedule = "cosine"
    c.warmup_epochs = 1.0
    c.plateau.factor = 1.0  # no plateau: the cosine schedule alone
    c.ema_decay = 0.999
    c.eval_tta = "flip"  # every epoch; the ten-crop is python -m fer_jax.evaluate --tta flip_crops
    return c
