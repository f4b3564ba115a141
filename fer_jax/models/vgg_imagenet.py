"""torchvision's VGG with BatchNorm (vgg16_bn, vgg19_bn), laid out so ImageNet weights map 1:1.

Each stage is n x (Conv3x3 with bias + BN + ReLU) then a 2x2/2 max-pool; the parameter
tree is flat, `block{stage}_conv{i}/{conv,bn}`, so a stage is frozen by its name
`block{stage}`. Two heads: "gap" (global average pool, dropout, Dense(num_classes):
light, for 48-112 px faces) and "classifier" (torchvision's adaptive 7x7 average pool,
Dense(4096)+ReLU+Dropout twice, then Dense(num_classes): fc1 and fc2 can take the
ImageNet classifier's weights).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.models.layers import (batch_norm, conv, global_avg_pool, logits_head,
                                   match_channels, max_pool2, resize_input)

VGG16_STAGES = (2, 2, 3, 3, 3)
VGG19_STAGES = (2, 2, 4, 4, 4)
IMAGENET_WIDTHS = (64, 128, 256, 512, 512)
CLASSIFIER_POOL = 7  # torchvision's AdaptiveAvgPool2d((7, 7)) before the classifier
HEADS = ("gap", "classifier")


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Averaging weights (n_out, n_in) of PyTorch's adaptive pool bins [floor(i*n/o), ceil((i+1)*n/o))."""
    weights = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """PyTorch's AdaptiveAvgPool2d((size, size)) on (B, H, W, C); bins overlap when H % size != 0."""
    rows = jnp.asarray(_pool_matrix(x.shape[1], size), x.dtype)
    cols = jnp.asarray(_pool_matrix(x.shape[2], size), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


class ConvBiasBNReLU(nn.Module):
    """torchvision's make_layers unit: Conv3x3 (with bias), BatchNorm, ReLU."""

    features: int
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    kernels: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(self.features, 3, self.dtype, use_bias=True, name="conv", kernels=self.kernels)(x)
        x = batch_norm(train, self.bn_axis_name, self.dtype, name="bn")(x)
        return nn.relu(x)


class VGGImageNet(nn.Module):
    """VGG-bn features (stage_sizes, widths) and a "gap" or "classifier" head.

    num_input_channels=3 repeats a grey (B, H, W, 1) input to three channels; 1 takes it
    as it is (the first conv's kernel then sums the RGB kernel). input_size > 0
    resizes the input bilinearly first (e.g. 48 -> 96 px).
    """

    num_classes: int = 7
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    stage_sizes: tuple[int, ...] = VGG16_STAGES
    widths: tuple[int, ...] = IMAGENET_WIDTHS
    head: str = "gap"
    classifier_width: int = 4096
    dropout: float = 0.5
    num_input_channels: int = 3
    input_size: int = 0
    kernels: str = "xla"  # the convolutions' kernels (fer_jax.kernels)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(f"stage_sizes {self.stage_sizes} and widths {self.widths} differ in length")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; expected one of {HEADS}")
        x = match_channels(resize_input(x, self.input_size), self.num_input_channels).astype(self.dtype)
        for stage, (num_convs, width) in enumerate(zip(self.stage_sizes, self.widths), start=1):
            for i in range(1, num_convs + 1):
                x = ConvBiasBNReLU(width, self.dtype, self.bn_axis_name, self.kernels,
                                   name=f"block{stage}_conv{i}")(x, train)
            x = max_pool2(x)
        if self.head == "gap":
            x = nn.Dropout(self.dropout, deterministic=not train)(global_avg_pool(x))
        else:
            # Flattened in (h, w, c) order; the converter permutes fc1's (c, h, w) columns.
            x = adaptive_avg_pool(x, CLASSIFIER_POOL).reshape((x.shape[0], -1))
            for name in ("fc1", "fc2"):
                x = nn.relu(nn.Dense(self.classifier_width, dtype=self.dtype, name=name)(x))
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return logits_head(self.num_classes, self.dtype, x)
