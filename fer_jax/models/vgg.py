"""VGG-style FER network (vgg_fer), the layout behind the best single-model FER2013 results."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.models.layers import ConvBNReLU, logits_head, max_pool2


class VGGFer(nn.Module):
    """Stages of two Conv3x3+BN+ReLU, 2x2 max-pool and dropout; flatten;
    (Dense(dense_width)+ReLU+Dropout) x 2; Dense(num_classes).

    stage_dropout regularises the conv stages, dropout the dense layers. Widths are
    attributes so that a narrow copy, e.g. widths=(32, 64, 128, 256), dense_width=256,
    trains on a CPU.
    """

    num_classes: int = 7
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    widths: tuple[int, ...] = (64, 128, 256, 512)
    dense_width: int = 1024
    dropout: float = 0.5
    stage_dropout: float = 0.2
    kernels: str = "xla"  # the convolutions' kernels (fer_jax.kernels)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x.astype(self.dtype)
        for width in self.widths:
            for _ in range(2):
                x = ConvBNReLU(width, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                               kernels=self.kernels)(x, train)
            x = max_pool2(x)
            x = nn.Dropout(self.stage_dropout, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        for _ in range(2):
            x = nn.relu(nn.Dense(self.dense_width, dtype=self.dtype)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return logits_head(self.num_classes, self.dtype, x)
