"""CBAM attention (Woo et al. 2018) and the original study's CNN that uses it (cbam_cnn)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.models.layers import (ConvBNReLU, batch_norm, conv, global_avg_pool, logits_head,
                                   max_pool2)


class ChannelAttention(nn.Module):
    """Scales channels by sigmoid(MLP(avg-pool) + MLP(max-pool)), one MLP shared by both."""

    reduction: int = 16
    min_hidden: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        hidden = nn.Dense(max(channels // self.reduction, self.min_hidden), dtype=self.dtype,
                          name="hidden")
        out = nn.Dense(channels, dtype=self.dtype, name="out")

        def mlp(pooled: jax.Array) -> jax.Array:
            return out(nn.relu(hidden(pooled)))

        weights = nn.sigmoid(mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2))))
        return x * weights[:, None, None, :]


class SpatialAttention(nn.Module):
    """Scales positions by sigmoid(conv7x7([channel mean, channel max])); sows the map."""

    kernel: int = 7
    dtype: Any = jnp.float32
    kernels: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = jnp.concatenate([jnp.mean(x, axis=-1, keepdims=True),
                                  jnp.max(x, axis=-1, keepdims=True)], axis=-1)
        logits = conv(1, self.kernel, self.dtype, use_bias=True, name="conv",
                      kernels=self.kernels)(pooled)
        attention = nn.sigmoid(logits)
        # (B, H, W, 1), retrievable with mutable=["intermediates"] for visualisation.
        self.sow("intermediates", "spatial_attention", attention)
        return x * attention


class CBAM(nn.Module):
    """Channel attention, then spatial attention."""

    reduction: int = 16
    dtype: Any = jnp.float32
    kernels: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ChannelAttention(self.reduction, dtype=self.dtype, name="channel")(x)
        return SpatialAttention(dtype=self.dtype, kernels=self.kernels, name="spatial")(x)


class CBAMCNN(nn.Module):
    """Stages of two Conv3x3+BN+ReLU, CBAM, 2x2 max-pool; global average pool;
    Dense(dense_width)+BN+ReLU+Dropout; Dense(num_classes).

    CBAM sits after each stage's convs and before its max-pool, as in the original study:
    the attention then sees (and its sown maps show) the stage's full resolution.
    The hidden Dense has no bias because BatchNorm follows it.
    """

    num_classes: int = 7
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    widths: tuple[int, ...] = (32, 64, 128)
    dense_width: int = 256
    dropout: float = 0.5
    reduction: int = 16
    kernels: str = "xla"  # the convolutions' kernels (fer_jax.kernels)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x.astype(self.dtype)
        for stage, width in enumerate(self.widths):
            for _ in range(2):
                x = ConvBNReLU(width, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                               kernels=self.kernels)(x, train)
            x = CBAM(self.reduction, dtype=self.dtype, kernels=self.kernels, name=f"cbam_{stage}")(x)
            x = max_pool2(x)
        x = global_avg_pool(x)
        x = nn.Dense(self.dense_width, use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(batch_norm(train, self.bn_axis_name, self.dtype)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return logits_head(self.num_classes, self.dtype, x)
