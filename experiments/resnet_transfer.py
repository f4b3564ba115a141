"""resnet_transfer: ResNet-18 fine-tuned from torchvision's ImageNet weights.

Needs the weights (no download here): --set init_from=resnet18-f37072fd.pth
(or a folder written by `python -m fer_jax.convert`). Without them it trains the same
network from scratch, a baseline for the cost and the gain of pretraining.
"""
from fer_jax.config import base_config
from fer_jax.experiments._common import original_study_augmentation


def get_config():
    c = original_study_augmentation(base_config())
    c.description = "ResNet-18, ImageNet stem, from torchvision ImageNet weights, 96 px"
    c.model = "resnet18"
    c.model_kwargs.stem = "imagenet"  # the 7x7/2 conv + max-pool the weights were trained with
    c.transfer.gray_to_rgb = "sum"  # 1-channel first conv: a third of the stem's cost of "repeat"
    c.transfer.input_size = 96  # 48 px would leave a 2x2 map after the stride-32 backbone
    c.transfer.imagenet_normalization = True
    c.transfer.freeze = ()
    c.transfer.backbone_lr_scale = 0.1
    c.warmup_epochs = 1.0  # the learning rate climbs from 0 over the first epoch
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.early_stopping_patience = 7
    return c
