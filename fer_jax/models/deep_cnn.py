"""The original study's deeper plain CNNs (deep_cnn_v1, deep_cnn_v2): VGG-like blocks, global pooling."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.models.layers import (ConvBNReLU, batch_norm, global_avg_pool, logits_head,
                                   max_pool2, spatial_dropout)


class DeepCNN(nn.Module):
    """Blocks of two Conv3x3+BN+ReLU and a 2x2 max-pool, global average pool,
    Dense(dense_width)+BN+ReLU+Dropout, Dense(num_classes).

    spatial_dropout > 0 drops whole channels after each of the first
    `spatial_dropout_blocks` blocks (v2 regularises the early, high-resolution maps).
    The hidden Dense has no bias because BatchNorm follows it.
    """

    num_classes: int = 7
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    widths: tuple[int, ...] = (32, 64, 128, 256)
    dense_width: int = 512
    dropout: float = 0.5
    spatial_dropout: float = 0.0
    spatial_dropout_blocks: int = 2
    kernels: str = "xla"  # the convolutions' kernels (fer_jax.kernels)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x.astype(self.dtype)
        for block, width in enumerate(self.widths):
            for _ in range(2):
                x = ConvBNReLU(width, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                               kernels=self.kernels)(x, train)
            x = max_pool2(x)
            if self.spatial_dropout > 0 and block < self.spatial_dropout_blocks:
                x = spatial_dropout(self.spatial_dropout)(x, deterministic=not train)
        x = global_avg_pool(x)
        x = nn.Dense(self.dense_width, use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(batch_norm(train, self.bn_axis_name, self.dtype)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return logits_head(self.num_classes, self.dtype, x)
