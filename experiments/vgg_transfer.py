"""vgg_transfer: VGG-16 with BatchNorm fine-tuned from torchvision's ImageNet weights.

Needs the weights (no download here): --set init_from=vgg16_bn-6c64b313.pth
(or a folder written by `python -m fer_jax.convert`). The light "gap" head replaces
torchvision's 4096-wide classifier, whose weights are then reported as not used.
"""
from fer_jax.config import base_config
from fer_jax.experiments._common import original_study_augmentation


def get_config():
    c = original_study_augmentation(base_config())
    c.description = "VGG-16-bn, from torchvision ImageNet weights, global-pool head, 96 px"
    c.model = "vgg16_bn"
    c.model_kwargs.head = "gap"
    c.model_kwargs.dropout = 0.3
    c.transfer.gray_to_rgb = "sum"
    c.transfer.input_size = 96  # 48 px would leave a 1x1 map after five max-pools
    c.transfer.imagenet_normalization = True
    c.transfer.freeze = ()
    c.transfer.backbone_lr_scale = 0.1
    c.warmup_epochs = 1.0
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.early_stopping_patience = 7
    return c
