"""The original study's two-conv baselines (simple_cnn_v1 and, with BatchNorm, simple_cnn_v2)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.models.layers import batch_norm, conv, logits_head, max_pool2


class SimpleCNN(nn.Module):
    """Conv5x5(32)-pool, Conv5x5(64)-pool, Dense(128), Dense(num_classes), dropout around Dense(128).

    batch_norm=True puts BatchNorm between each conv and its ReLU (v2); the conv then
    drops its bias, which BatchNorm's shift would cancel. widths and kernel_size vary the
    stack of conv-pool blocks beyond the study's two 5x5 ones.
    """

    num_classes: int = 7
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    batch_norm: bool = False
    widths: tuple[int, ...] = (32, 64)
    kernel_size: int = 5
    dense_width: int = 128
    dropout: float = 0.3
    kernels: str = "xla"  # the convolutions' kernels (fer_jax.kernels)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x.astype(self.dtype)
        for width in self.widths:
            x = conv(width, self.kernel_size, self.dtype, use_bias=not self.batch_norm,
                     kernels=self.kernels)(x)
            if self.batch_norm:
                x = batch_norm(train, self.bn_axis_name, self.dtype)(x)
            x = max_pool2(nn.relu(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(nn.Dense(self.dense_width, dtype=self.dtype)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return logits_head(self.num_classes, self.dtype, x)
