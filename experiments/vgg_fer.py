"""vgg_fer: the VGG-style recipe of Khaireddin et al. (2021, 73.28% on FER2013).

Four stages of two 3x3 convolutions (64-128-256-512) with BatchNorm and ReLU, a 2x2
max-pool and dropout after each stage, two dense layers of 1024 with dropout 0.5
(fer_jax/models/vgg.py). Training on random 40x40 crops of the 48x48 faces with
mirror images, small rotations and shifts and random erasing; SGD with Nesterov momentum
0.9 at 0.01, L2 weight decay 1e-4, the rate cut to 0.75x after 5 epochs without a
better validation loss; 300 epochs, resumable in pieces. Evaluated with the ten-crop
(`--tta flip_crops`: the four corner 40x40 windows and the centre one, with mirrors).
The compute this takes on a CPU is in docs/results/accuracy_plan.md.
"""
from fer_jax.config import base_config
from fer_jax.experiments._common import original_study_augmentation


def get_config():
    c = original_study_augmentation(base_config())
    c.description = "VGG 64-512, 40x40 crops, SGD Nesterov, reduce-on-plateau, 300 epochs"
    c.model = "vgg_fer"
    c.augment.random_crop = 40
    c.augment.translate_frac = 0.0  # the random crop does the shifting
    c.augment.erasing_prob = 0.5
    c.optimizer = "nesterov"
    c.momentum = 0.9
    c.learning_rate = 0.01
    c.weight_decay = 1e-4
    c.batch_size = 64
    c.epochs = 300
    c.plateau.factor = 0.75
    c.plateau.patience = 5
    c.plateau.min_scale = 1e-3
    # bfloat16 compute, float32 master weights: with oneDNN's kernels the step takes 0.81x
    # the float32 one on a 2-core CPU (docs/results/accuracy_plan.md), and fast_15min lost
    # nothing to it; accelerators take bfloat16 in their stride.
    c.compute_dtype = "bfloat16"
    c.eval_tta = "flip"  # every epoch; the ten-crop is python -m fer_jax.evaluate --tta flip_crops
    return c
