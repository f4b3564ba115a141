"""BasicBlock ResNets (resnet18, resnet34) sized for 48x48 faces."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.models.layers import (ConvBNReLU, batch_norm, conv, global_avg_pool, logits_head,
                                   match_channels, max_pool2, resize_input)

STEMS = ("cifar", "pool", "imagenet")
RESNET18_STAGES = (2, 2, 2, 2)
RESNET34_STAGES = (3, 4, 6, 3)


class BasicBlock(nn.Module):
    """Two Conv3x3+BN with an identity, or 1x1 conv+BN projection, shortcut."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    kernels: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = ConvBNReLU(self.features, strides=self.strides, dtype=self.dtype,
                       bn_axis_name=self.bn_axis_name, kernels=self.kernels,
                       name="conv_bn_relu")(x, train)
        y = conv(self.features, 3, self.dtype, use_bias=False, name="conv2",
                 kernels=self.kernels)(y)
        y = batch_norm(train, self.bn_axis_name, self.dtype, name="bn2")(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, 1, self.dtype, use_bias=False, strides=self.strides,
                            name="proj_conv", kernels=self.kernels)(x)
            shortcut = batch_norm(train, self.bn_axis_name, self.dtype, name="proj_bn")(shortcut)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """ResNet of BasicBlocks; stage widths width*(1, 2, 4, 8), strides 1, 2, 2, 2.

    stem="cifar" (default, for 48x48): Conv3x3/1 + BN + ReLU, no max-pool, so the last
    stage still sees 6x6. stem="pool": the same followed by a 2x2 max-pool, a quarter of
    the compute (stages see 24, 12, 6, 3). stem="imagenet": Conv7x7/2 + BN + ReLU + MaxPool3x3/2, the
    torchvision layout that ImageNet-pretrained weights expect; with
    num_input_channels=3 a grey (B, H, W, 1) input is repeated to three channels.
    """

    num_classes: int = 7
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    stage_sizes: tuple[int, ...] = RESNET18_STAGES
    width: int = 64
    stem: str = "cifar"
    num_input_channels: int = 1
    input_size: int = 0  # > 0: inputs are resized to this size first (e.g. 96 for ImageNet weights)
    kernels: str = "xla"  # the convolutions' kernels (fer_jax.kernels)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = match_channels(resize_input(x, self.input_size), self.num_input_channels).astype(self.dtype)
        if self.stem == "cifar":
            x = ConvBNReLU(self.width, 3, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                           kernels=self.kernels, name="stem")(x, train)
        elif self.stem == "pool":
            x = ConvBNReLU(self.width, 3, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                           kernels=self.kernels, name="stem")(x, train)
            x = max_pool2(x)
        elif self.stem == "imagenet":
            x = ConvBNReLU(self.width, 7, strides=2, dtype=self.dtype,
                           bn_axis_name=self.bn_axis_name, kernels=self.kernels,
                           name="stem")(x, train)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"unknown stem {self.stem!r}; expected one of {STEMS}")
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2 ** stage, strides, dtype=self.dtype,
                               bn_axis_name=self.bn_axis_name, kernels=self.kernels,
                               name=f"stage{stage + 1}_block{block + 1}")(x, train)
        return logits_head(self.num_classes, self.dtype, global_avg_pool(x))
